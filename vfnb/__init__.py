"""vfnb: vertebral fracture grading from CT with supervised contrastive learning.

The helper package of the "Faint Features Tell" reproducible study. Heavy code
lives here; the notebooks in ``notebooks/`` call it.
"""

__version__ = "0.2.0"
