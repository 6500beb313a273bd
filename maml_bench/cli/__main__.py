"""`python -m maml_bench.cli ...`, as torchrun launches each process
(`torchrun --nproc-per-node N -m maml_bench.cli run ...`): the `maml-bench` command."""

from maml_bench.cli import entry

# Only as the main module: a tool that imports every module (pydoc, a test) runs no command.
if __name__ == "__main__":
    entry()
