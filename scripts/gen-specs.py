#!/usr/bin/env python3
"""Generate a folder of realistic Kiln image specs, for benchmarking `kiln check`.

    scripts/gen-specs.py OUT_DIR [--count 10000] [--invalid-every N] [--seed 1] [--flat]

Specs are spread over team sub-folders (`OUT_DIR/<team>/<name>.yaml`, or all in OUT_DIR with
--flat); every name is unique and equals its file stem, so the set is valid as a whole. They
vary the way real repositories do: apt-only tool images, pip data-science images, conda
images, mixes of all three; lists and literal blocks (`|`); comments on their own lines and
after entries; pinned and unpinned versions, extras, markers, channels, architectures; an
optional description and pullSecret.

With --invalid-every N, every N-th spec (the N-th, 2N-th, ...) gets exactly one defect, chosen
in turn from a list of realistic mistakes (a typo in a key, two packages on one line, a folded
block, a bad version specifier, ...), so `--invalid-every 10` makes 10% of the files invalid.
Output is deterministic for a given --seed. Python 3 standard library only.
"""
import argparse
import os
import random
import sys

TEAMS = [
    "analytics", "ml-platform", "data-eng", "research", "infra", "sre", "bioinfo", "finance",
    "search", "recsys", "vision", "nlp", "growth", "security", "ci", "web", "mobile", "geo",
    "quant", "robotics",
]
WORDS = [
    "base", "notebook", "train", "serve", "etl", "batch", "tools", "debug", "cpu", "gpu",
    "lab", "api", "worker", "scheduler", "report", "ingest", "export", "eval", "bench", "lint",
]
BASES = [
    "debian:bookworm-slim",
    "ubuntu:22.04",
    "ubuntu:24.04",
    "python:3.12-slim",
    "python:3.11-bookworm",
    "docker.io/library/debian:12",
    "registry.example.com/base/python:3.11",
    "registry.example.com/base/micromamba:1.5-bookworm",
    "ghcr.io/acme/base-images/cuda-runtime:12.4.1-ubuntu22.04",
    "127.0.0.1:5000/kiln/bookworm:minbase",
    "127.0.0.1:5000/kiln/bookworm-python:minbase",
    "mambaorg/micromamba:1.5.8",
    "quay.io/jupyter/minimal-notebook:2024-05-27",
    "registry.internal:5000/platform/base@sha256:" + "3f" * 32,
]
PULL_SECRETS = ["internal-registry", "ghcr-readonly", "quay_robot", "ecr.prod"]
APT = [
    "ca-certificates", "curl", "wget", "jq", "less", "procps", "git", "openssh-client", "vim-tiny",
    "htop", "strace", "lsof", "iproute2", "iputils-ping", "dnsutils", "netcat-openbsd", "unzip",
    "zip", "xz-utils", "build-essential", "gcc", "g++", "make", "cmake", "pkg-config",
    "libssl-dev", "libffi-dev", "zlib1g-dev", "libgomp1", "libpq5", "libpq-dev", "libsqlite3-0",
    "libxml2", "libxslt1.1", "libjpeg62-turbo", "libpng16-16", "libgl1", "libglib2.0-0",
    "fonts-dejavu-core", "locales", "tzdata", "tini", "gosu", "rsync", "postgresql-client",
    "default-mysql-client", "redis-tools", "graphviz", "pandoc", "texlive-latex-base",
    "ffmpeg", "imagemagick", "gdal-bin", "libgdal32", "libproj25", "python3", "python3-pip",
    "python3-venv", "openjdk-17-jre-headless", "r-base-core", "sqlite3", "file", "tree",
]
APT_PINS = ["=7.88.1-10+deb12u5", "=1.6-2.1", "=2.39.2-1.1", ":amd64", "/bookworm-backports"]
PIP = [
    "numpy", "pandas", "scipy", "scikit-learn", "matplotlib", "seaborn", "plotly", "jupyterlab",
    "ipykernel", "ipywidgets", "requests", "httpx", "aiohttp", "fastapi", "uvicorn", "gunicorn",
    "flask", "django", "sqlalchemy", "psycopg2-binary", "pymysql", "redis", "celery", "boto3",
    "google-cloud-storage", "azure-storage-blob", "pyarrow", "polars", "duckdb", "dask",
    "xgboost", "lightgbm", "catboost", "torch", "torchvision", "tensorflow", "keras",
    "transformers", "datasets", "tokenizers", "sentencepiece", "spacy", "nltk", "gensim",
    "opencv-python-headless", "pillow", "scikit-image", "statsmodels", "sympy", "networkx",
    "pydantic", "pyyaml", "click", "typer", "rich", "tqdm", "loguru", "pytest", "mypy", "ruff",
    "black", "mlflow", "wandb", "optuna", "ray", "prefect", "great-expectations", "dbt-core",
    "six", "attrs", "python-dateutil", "pytz", "jinja2", "openpyxl", "xlrd", "lxml",
    "beautifulsoup4", "shapely", "geopandas", "pyproj", "rasterio",
]
PIP_SPECS = [
    "", "", "", ">=2.1", "==1.5.*", "~=1.26.0", ">=1.0,<2", "==2.3.0", "!=1.2.3", "<3",
]
PIP_EXTRAS = {
    "requests": "[socks]", "uvicorn": "[standard]", "ray": "[default]", "celery": "[redis]",
    "dask": "[dataframe]", "black": "[jupyter]",
}
CONDA = [
    "python", "numpy", "scipy", "pandas", "matplotlib", "jupyterlab", "ipykernel", "r-base",
    "r-tidyverse", "r-irkernel", "gdal", "geopandas", "cartopy", "netcdf4", "xarray", "zarr",
    "hdf5", "h5py", "pytables", "numba", "cython", "mkl", "openblas", "libblas", "cudatoolkit",
    "pytorch", "bioconda::samtools", "bioconda::bcftools", "bioconda::bwa",
    "bioconda::snakemake-minimal", "biopython", "conda-forge::mamba", "pip", "nodejs",
]
CONDA_SPECS = ["", "", ">=1.17", "==1.26.*", "=3.11", " 3.11.*", ">=4", " 1.11.* py311*", "<2"]
COMMENTS = [
    "pinned for reproducibility", "needed by the ingest job", "see ticket PLAT-1234",
    "remove once upstream fixes the wheel", "OpenMP runtime", "debug only", "TODO: bump",
    "matches the prod cluster", "required by scikit-learn",
]
DESCRIPTIONS = [
    "Notebook image for the {team} team",
    "Batch jobs: {word} pipeline",
    "Serving image for the {word} API",
    "Tools for debugging {team} workloads",
    "Training environment ({word}), CPU only",
    "Nightly {word} reports",
]


def pick(rng, pool, lo, hi):
    n = rng.randint(lo, hi)
    return rng.sample(pool, min(n, len(pool)))


def apt_entries(rng):
    out = []
    for pkg in pick(rng, APT, 1, 18):
        if rng.random() < 0.12:
            pin = rng.choice(APT_PINS)
            pkg += pin
        out.append(pkg)
    return out


def pip_entries(rng):
    out = []
    for pkg in pick(rng, PIP, 1, 30):
        extra = PIP_EXTRAS.get(pkg, "") if rng.random() < 0.5 else ""
        spec = rng.choice(PIP_SPECS)
        line = pkg + extra + spec
        if rng.random() < 0.04:
            line += ' ; python_version >= "3.9"'
        out.append(line)
    return out


def conda_entries(rng):
    out = []
    seen = set()
    for pkg in pick(rng, CONDA, 1, 14):
        bare = pkg.split("::")[-1]
        if bare in seen:
            continue
        seen.add(bare)
        line = pkg + rng.choice(CONDA_SPECS)
        if rng.random() < 0.2 and "::" not in pkg:
            line = "conda-forge::" + line
        out.append(line)
    return out


FLOW_SPECIAL = set(",[]{}#&*!|>'\"%@`")


def yaml_scalar(text, flow=False, force=False):
    """`text` as a YAML scalar: plain when that reads back as the same string, else quoted."""
    needs = (
        force
        or ": " in text
        or " #" in text
        or text[:1] in "-?:,[]{}#&*!|>'\"%@`"
        or (flow and any(c in FLOW_SPECIAL for c in text))
    )
    if not needs:
        return text
    if '"' in text:
        return "'" + text.replace("'", "''") + "'"
    return '"' + text.replace("\\", "\\\\") + '"'


def render_list(rng, key, entries):
    """One manager's packages, as a YAML list or a literal block, with some comments."""
    lines = []
    style = rng.random()
    if style < 0.55:
        lines.append(f"  {key}:")
        for e in entries:
            if rng.random() < 0.06:
                lines.append(f"    # {rng.choice(COMMENTS)}")
            item = yaml_scalar(e, force=rng.random() < 0.1)
            tail = f"  # {rng.choice(COMMENTS)}" if rng.random() < 0.08 else ""
            lines.append(f"    - {item}{tail}")
    elif style < 0.65:
        quoted = ", ".join(yaml_scalar(e, flow=True) for e in entries)
        lines.append(f"  {key}: [{quoted}]")
    else:
        lines.append(f"  {key}: |")
        for e in entries:
            if rng.random() < 0.05:
                lines.append("")
            if rng.random() < 0.06:
                lines.append(f"    # {rng.choice(COMMENTS)}")
            tail = f"    # {rng.choice(COMMENTS)}" if rng.random() < 0.1 else ""
            lines.append(f"    {e}{tail}")
    return lines


def make_spec(rng, name, team, word):
    kind = rng.random()
    managers = {}
    if kind < 0.25:
        managers["apt"] = apt_entries(rng)
    elif kind < 0.55:
        managers["pip"] = pip_entries(rng)
        if rng.random() < 0.6:
            managers["apt"] = apt_entries(rng)
    elif kind < 0.75:
        managers["conda"] = conda_entries(rng)
        if rng.random() < 0.5:
            managers["pip"] = pip_entries(rng)
    else:
        managers["apt"] = apt_entries(rng)
        managers["conda"] = conda_entries(rng)
        managers["pip"] = pip_entries(rng)

    lines = []
    if rng.random() < 0.5:
        lines.append("# yaml-language-server: $schema=../deploy/kiln-spec.schema.json")
    if rng.random() < 0.4:
        lines.append(f"# Owned by {team}; ask in #{team}-platform before changing the base.")
    lines.append(f"name: {name}")
    if rng.random() < 0.8:
        desc = rng.choice(DESCRIPTIONS).format(team=team, word=word)
        lines.append("description: " + yaml_scalar(desc, force=rng.random() < 0.3))
    lines.append(f"baseImage: {rng.choice(BASES)}")
    if rng.random() < 0.15:
        lines.append(f"pullSecret: {rng.choice(PULL_SECRETS)}")
    lines.append("packages:")
    keys = list(managers)
    if rng.random() < 0.3:
        rng.shuffle(keys)
    for key in keys:
        lines.extend(render_list(rng, key, managers[key]))
    return lines


# Each defect turns a valid spec (list of lines) into an invalid one, the way people get it wrong.
def defect_key_typo(rng, lines, name):
    return [l.replace("baseImage:", "baseimage:", 1) for l in lines]


def defect_two_per_line(rng, lines, name):
    return _append_pkg(lines, "apt", "curl wget")


def defect_folded(rng, lines, name):
    return _append_block(lines, ">")


def defect_bad_pip(rng, lines, name):
    return _append_pkg(lines, "pip", "pandas=>2.1")


def defect_bad_apt(rng, lines, name):
    return _append_pkg(lines, "apt", "Python3-Dev")


def defect_duplicate(rng, lines, name):
    return _append_pkg(lines, "pip", "numpy", dup=True)


def defect_name_mismatch(rng, lines, name):
    return [f"name: {name}-old" if l == f"name: {name}" else l for l in lines]


def defect_missing_base(rng, lines, name):
    return [l for l in lines if not l.startswith("baseImage:")]


def defect_yaml_syntax(rng, lines, name):
    return [l.replace("description: ", "description: [unclosed ", 1)
            if l.startswith("description:") else l for l in lines] + (
        [] if any(l.startswith("description:") for l in lines) else ["packages: [oops"])


def defect_bad_base(rng, lines, name):
    return [("baseImage: Registry.Example.com/Base/Python:3.11"
             if l.startswith("baseImage:") else l) for l in lines]


def defect_wrong_type(rng, lines, name):
    return [l for l in lines if not l.startswith("pullSecret:")] + ["pullSecret: [a, b]"]


def defect_alias(rng, lines, name):
    return [l.replace("baseImage: ", "baseImage: &base ", 1) for l in lines]


DEFECTS = [
    defect_key_typo, defect_two_per_line, defect_folded, defect_bad_pip, defect_bad_apt,
    defect_duplicate, defect_name_mismatch, defect_missing_base, defect_yaml_syntax,
    defect_bad_base, defect_wrong_type, defect_alias,
]


def _packages_index(lines):
    return lines.index("packages:")


def _append_pkg(lines, key, entry, dup=False):
    """Add `entry` under `packages.<key>` as a new list (replacing the key if present)."""
    start = _packages_index(lines)
    head, body = lines[: start + 1], lines[start + 1:]
    kept, skipping = [], False
    for l in body:
        if l.startswith("  ") and not l.startswith("   "):
            skipping = l.startswith(f"  {key}:")
        if not skipping:
            kept.append(l)
    items = [entry] + ([entry + "==1.0"] if dup else [])
    return head + kept + [f"  {key}:"] + [f"    - {e}" for e in items]


def _append_block(lines, indicator):
    start = _packages_index(lines)
    head, body = lines[: start + 1], lines[start + 1:]
    kept, skipping = [], False
    for l in body:
        if l.startswith("  ") and not l.startswith("   "):
            skipping = l.startswith("  conda:")
        if not skipping:
            kept.append(l)
    return head + kept + [f"  conda: {indicator}", "    numpy", "    scipy"]


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out_dir")
    ap.add_argument("--count", type=int, default=10000)
    ap.add_argument("--invalid-every", type=int, default=0, metavar="N",
                    help="make every N-th spec invalid (0: all valid)")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--flat", action="store_true", help="no team sub-folders")
    args = ap.parse_args(argv)
    if args.count < 0 or args.invalid_every < 0:
        ap.error("--count and --invalid-every must be >= 0")

    rng = random.Random(args.seed)
    os.makedirs(args.out_dir, exist_ok=True)
    total_bytes = 0
    invalid = 0
    for i in range(1, args.count + 1):
        team = TEAMS[i % len(TEAMS)]
        word = rng.choice(WORDS)
        name = f"{team}-{word}-{i:05d}"
        lines = make_spec(rng, name, team, word)
        if args.invalid_every and i % args.invalid_every == 0:
            defect = DEFECTS[(i // args.invalid_every - 1) % len(DEFECTS)]
            lines = defect(rng, lines, name)
            invalid += 1
        folder = args.out_dir if args.flat else os.path.join(args.out_dir, team)
        os.makedirs(folder, exist_ok=True)
        data = ("\n".join(lines) + "\n").encode()
        total_bytes += len(data)
        with open(os.path.join(folder, name + ".yaml"), "wb") as f:
            f.write(data)
    print(f"wrote {args.count} specs ({invalid} invalid, {total_bytes / 1e6:.1f} MB) to {args.out_dir}",
          file=sys.stderr)


if __name__ == "__main__":
    main()
