"""Evaluation on the original image grid through each model's processor, and pictures of the results."""
