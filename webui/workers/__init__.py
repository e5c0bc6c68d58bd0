"""Code that runs only in child processes (it may import lmdeploy and torch)."""
