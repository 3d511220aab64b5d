"""Training on Hugging Face Accelerate."""
