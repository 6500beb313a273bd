"""Few-shot image classification: datasets on disk, their splits, and N-way K-shot episodes."""
