"""Meta-reinforcement learning (paper section 5.3): gymnasium environments with task
distributions, a trajectory sampler, and the policy-gradient pieces of MAML-TRPO."""
