"""Data: the sample dict, dataset adapters, built-in phantoms, splits and the tf.data pipeline."""
