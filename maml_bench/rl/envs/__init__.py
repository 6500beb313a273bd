"""Task-distribution environments registered with gymnasium under versioned ids."""
