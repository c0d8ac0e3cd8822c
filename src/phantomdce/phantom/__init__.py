"""Anthropomorphic head-and-neck phantom (simulation side): anatomy and acquisition."""
