"""Stage 1: fetch the data set's archive from `download.url` and verify its md5.

Refuses, before any download, the official archive of another data set than `dataset.name` (its URL or md5).
"""

from __future__ import annotations

from cifar10.download import download_archive
from cifar10.errors import run_stage
from cifar10.params import check_archive_matches_dataset
from cifar10.stage import start_stage


def main() -> None:
    args, (params, dataset), _ = start_stage(
        __doc__, {"output": "where the verified archive goes"}, section=("download", "dataset"), seeded=False
    )
    check_archive_matches_dataset(params, dataset)
    md5 = download_archive(params, args.output)
    print(f"download: {args.output} ({args.output.stat().st_size / 2**20:.1f} MiB, md5 {md5})")


if __name__ == "__main__":
    run_stage(main)
