"""Built-in history encoders for ``sequence`` fields: masked mean, DIN target attention, SASRec self-attention."""
