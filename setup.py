from setuptools import find_packages, setup

# The dataset cards stay in datasets/ at the repository root and ship as package data: the
# package mtl.datasets is that folder (setup.cfg: package_dir, package_data), so a wheel holds
# mtl/datasets/*.yaml; mtl/data/cards.py looks there first, then in a checkout's datasets/.
setup(packages=find_packages(include=["mtl", "mtl.*"]) + ["mtl.datasets"])
