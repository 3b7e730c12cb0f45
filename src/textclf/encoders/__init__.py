"""Text encoders: text -> the batch mapping a backbone takes, the same in preprocess and serving."""
