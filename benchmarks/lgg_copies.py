"""Which TCGA-LGG slices does near-copy linking (mtl.data.copies) join, and across patients?

Backs the choice of ``data.link_copies: false`` in experiments/lgg_grade.yaml: run on the real
set (``data/lgg``, see README -> Grade on TCGA-LGG),

    python benchmarks/lgg_copies.py --out benchmarks/results/lgg_copies.json

prints and writes the near-copy pairs found, how many join two different patients, how many of
those involve a tumor slice, and how much of the larger slice of each such pair is head (pixels
of the FLAIR channel above 10 of 255): near-blank slices at the ends of the volumes.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import tifffile

from mtl.config import load_config
from mtl.data.copies import link_copies
from mtl.data.pipeline import open_sources


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", default="experiments/lgg_grade.yaml")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    sources = open_sources(load_config(args.config))
    links = link_copies(sources, progress=True)
    records = sources[0].records
    cross = [(a, b) for (_, a), (_, b) in links.pairs if records[a].patient_id != records[b].patient_id]
    with_tumor = [(a, b) for a, b in cross if records[a].presence or records[b].presence]

    def head_fraction(i: int) -> float:
        flair = np.asarray(tifffile.imread(records[i].source))[..., 1]
        return float((flair > 10).mean())

    fractions = [max(head_fraction(a), head_fraction(b)) for a, b in cross]
    patients = {records[i].patient_id for pair in cross for i in pair}
    result = {
        "near_copy_pairs": len(links.pairs),
        "cross_patient_pairs": len(cross),
        "patients_in_cross_patient_pairs": len(patients),
        "cross_patient_pairs_with_a_tumor_slice": len(with_tumor),
        "head_fraction_of_larger_slice_min_median_p90_max":
            np.quantile(fractions, [0, 0.5, 0.9, 1]).round(3).tolist() if fractions else [],
        "split_groups_when_linked": links.summary(),
    }
    text = json.dumps(result, indent=1)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
