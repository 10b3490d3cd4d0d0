"""cifar10-report: a review report for a pull request, and DVC's plots without internet.

    cifar10-report --rev main              # report.md: metrics and params diff against main, and the key plots
    cifar10-report --rev main --comment    # the same, posted with `cml comment create` when CML is installed
    cifar10-report --offline-plots         # once per clone: `dvc plots show` / `dvc plots diff` work offline

The report's charts are DVC's own Vega-Lite specs (`dvc plots diff REV --json`: the workspace against REV
on one chart), drawn to PNG by the Vega engine bundled in vl-convert, with no browser and no network.
`--offline-plots` writes an HTML template that carries the same engine inline (Vega, Vega-Lite,
vega-embed: about 0.9 MB) and points DVC at it with `dvc config --local plots.html_template`, so the page
`dvc plots show` writes no longer loads its scripts from a CDN.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
from pathlib import Path

from cifar10.atomic import atomic_dir, atomic_file
from cifar10.errors import StageError

# The charts worth a look in review, in this order: (plot id in dvc.yaml, heading, image file name).
KEY_PLOTS = (
    ("Accuracy", "Accuracy", "accuracy.png"),
    ("Loss", "Loss", "loss.png"),
    ("metrics/per_class.csv", "Per-class recall (test set)", "per-class-recall.png"),
    ("Confusion matrix (test set)", "Confusion matrix (test set)", "confusion-matrix.png"),
)
KEY_IMAGES = ("plots/evaluate/confusion.png", "plots/evaluate/mistakes.png")
DVC_DEADLINE_S = 600.0  # per dvc command; metrics and plots of a few revisions take seconds
CML_DEADLINE_S = 300.0  # posting a comment: a few requests to the forge's API and image uploads
OFFLINE_TEMPLATE = "tmp/plots-offline.html"  # under .dvc/ (git-ignored there); DVC resolves it from .dvc/

# DVC's own page (dvc_render.html.PAGE_HTML) with the scripts inline instead of `{scripts}` (CDN tags).
PAGE = """<!DOCTYPE html>
<html>
<head>
    <meta charset="utf-8">
    {refresh_tag}
    <title>DVC Plot</title>
    <script type="text/javascript">__BUNDLE__</script>
    <style>
        table {
            border-spacing: 15px;
        }
    </style>
</head>
<body>
    {plot_divs}
</body>
</html>"""


def dvc(*args: str) -> str:
    """Return the stdout of `dvc ARGS` run here; StageError with DVC's last line if it fails."""
    try:
        result = subprocess.run(
            [sys.executable, "-m", "dvc", *args], capture_output=True, text=True, timeout=DVC_DEADLINE_S
        )
    except subprocess.TimeoutExpired:
        raise StageError(f"dvc {' '.join(args)} did not finish within {DVC_DEADLINE_S:g} s") from None
    if result.returncode != 0:
        last = (result.stderr.strip().splitlines() or [f"exited {result.returncode}"])[-1]
        raise StageError(f"dvc {' '.join(args)}: {last[:200]}")
    return result.stdout


def render_png(spec: dict) -> bytes:
    """Draw a Vega-Lite spec to PNG with vl-convert's bundled Vega, no browser; StageError if it cannot.

    No URL may be loaded (allowed_base_urls=[]): DVC's specs carry their data inline, and a template
    naming a URL would otherwise make the report go online, with no deadline.
    """
    import vl_convert

    try:
        return vl_convert.vegalite_to_png(spec, scale=1.5, allowed_base_urls=[])
    except Exception as exc:  # vl-convert raises ValueError for a bad spec, others from its engine
        raise StageError(f"cannot draw a chart ({type(exc).__name__}: {' '.join(str(exc).split())[:160]})") from None


def write_report(rev: str, out: Path, root: Path) -> list[Path]:
    """Write `out` (Markdown) and its images in `<out stem>-images/`; return the image paths.

    The Markdown holds `dvc metrics diff REV --md`, `dvc params diff REV --md` and the key charts, each
    drawing REV and the workspace together.
    """
    metrics = dvc("metrics", "diff", rev, "--md").strip() or "No metric changed."
    params = dvc("params", "diff", rev, "--md").strip() or "No param changed."
    try:
        plots = json.loads(dvc("plots", "diff", rev, "--json")).get("data", {})
    except ValueError:
        raise StageError("dvc plots diff --json did not print JSON") from None
    images_dir = out.with_name(f"{out.stem}-images")
    images: list[Path] = []
    lines = [f"## Metrics (workspace against `{rev}`)", "", metrics, "", "## Params", "", params, "", "## Plots", ""]
    with atomic_dir(images_dir) as tmp:
        for plot_id, name, file in KEY_PLOTS:
            vega = [entry for entry in plots.get(plot_id, []) if entry.get("type") == "vega"]
            if not vega:
                continue
            (tmp / file).write_bytes(render_png(vega[0]["content"]))
            images.append(images_dir / file)
            lines += [f"### {name}", "", f"![{name}]({images_dir.name}/{file})", ""]
        for path in map(Path, KEY_IMAGES):  # the workspace's pictures
            if (root / path).is_file():
                shutil.copyfile(root / path, tmp / path.name)
                images.append(images_dir / path.name)
                lines += [f"### {path.name} (workspace)", "", f"![{path.name}]({images_dir.name}/{path.name})", ""]
    with atomic_file(out) as tmp_out:
        tmp_out.write_text("\n".join(lines))
    return images


def write_offline_template(dvc_dir: Path) -> Path:
    """Write DVC's HTML page with Vega inline to `.dvc/tmp/` and make it this clone's plots template."""
    import vl_convert

    path = dvc_dir / OFFLINE_TEMPLATE
    path.parent.mkdir(parents=True, exist_ok=True)
    bundle = vl_convert.javascript_bundle()
    with atomic_file(path) as tmp:
        # A `</script>` inside the bundle's strings would end the tag early; escape it as the HTML spec advises.
        tmp.write_text(PAGE.replace("__BUNDLE__", bundle.replace("</script", "<\\/script")))
    dvc("config", "--local", "plots.html_template", OFFLINE_TEMPLATE)
    return path


def post_comment(report: Path) -> str:
    """Post `report` as a pull-request comment with CML (`cml comment create`); return the line to print.

    Without CML on PATH the report stays a file, and the line says so. CML's failure raises SubprocessError.
    """
    cml = shutil.which("cml")
    if cml is None:
        return "report: CML is not installed (npm install -g @dvcorg/cml); the report is in the file above"
    subprocess.run([cml, "comment", "create", str(report)], check=True, timeout=CML_DEADLINE_S)
    return f"report: posted {report} with cml comment create"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="cifar10-report", description=__doc__.splitlines()[0])
    parser.add_argument("--rev", default="main", help="the git revision to compare against (default: main)")
    parser.add_argument("--out", type=Path, default=Path("report.md"), help="the Markdown file (default: report.md)")
    parser.add_argument("--comment", action="store_true", help="post the report with `cml comment create`")
    parser.add_argument(
        "--offline-plots", action="store_true", help="only set up `dvc plots show` to work without internet"
    )
    args = parser.parse_args(argv)
    try:
        root = Path(dvc("root").strip())
        if args.offline_plots:
            print(f"offline plots: {write_offline_template(root / '.dvc')}; `dvc plots show` now needs no network")
            return 0
        images = write_report(args.rev, args.out, root)
        print(f"report: {args.out} with {len(images)} images in {args.out.stem}-images/")
        if args.comment:
            print(post_comment(args.out))
    except StageError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except subprocess.SubprocessError as exc:
        print(f"error: cml comment create failed ({exc}); the report is in {args.out}", file=sys.stderr)
        return 1
    except OSError as exc:  # writing the report or its images: a full disk, a read-only folder
        print(f"error: {exc.filename or args.out}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    return 0


def cli() -> None:
    sys.exit(main())


if __name__ == "__main__":
    cli()
