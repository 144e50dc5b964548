"""mtl: one network that says whether a brain MRI slice holds a tumor, which kind, and where."""

__version__ = "0.1.0"
