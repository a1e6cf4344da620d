#!/usr/bin/env python3
"""Regenerate fuzz/seeds/: the example specs plus hand-made nasty inputs.

    python3 fuzz/gen-seeds.py            # from the repository root

The fuzz target parses every input as `fuzz.yaml`, so seeds meant to reach the valid path
(and the Dockerfile renderer) use `name: fuzz`; the examples are also kept verbatim, where the
name mismatch is one more diagnostic.
"""
import pathlib
import re

ROOT = pathlib.Path(__file__).resolve().parent.parent
SEEDS = ROOT / "fuzz" / "seeds"
MAX_SPEC_BYTES = 64 * 1024


def main():
    SEEDS.mkdir(parents=True, exist_ok=True)
    for old in SEEDS.iterdir():
        old.unlink()
    seeds = {}

    for example in sorted((ROOT / "specs-example").glob("*.yaml")):
        text = example.read_bytes()
        seeds[f"example-{example.stem}.yaml"] = text
        seeds[f"example-{example.stem}-as-fuzz.yaml"] = re.sub(
            rb"(?m)^name: .*$", b"name: fuzz", text
        )

    seeds["valid-all-managers.yaml"] = b"""\
# every manager, list and block styles, comments
name: fuzz
description: "quoted: with # hash and & ampersand"
baseImage: docker.io/library/python:3.12-slim@sha256:""" + b"a" * 64 + b"""
pullSecret: my-registry_1
packages:
  apt: |
    # comment line
    curl=7.88.1-10+deb12u5   # trailing comment
    libssl3:amd64

    git
  conda:
    - conda-forge::numpy>=1.26,<2
    - "scipy 1.11.* py311*"
    - python=3.11
  pip:
    - requests[security,socks]>=2.31 ; python_version >= "3.8"
    - 'torch==2.3.0+cpu'
    - pkg @ https://example.com/pkg-1.0-py3-none-any.whl
    - numpy~=1.26.0
"""
    seeds["valid-flow-style.yaml"] = (
        b"{name: fuzz, baseImage: 'ubuntu:22.04', packages: {apt: [curl, jq], pip: [six==1.16.0]}}\n"
    )
    seeds["valid-minimal.yaml"] = b"name: fuzz\nbaseImage: alpine\n"
    seeds["valid-crlf-bom.yaml"] = (
        b"\xef\xbb\xbfname: fuzz\r\nbaseImage: alpine:3.19\r\npackages:\r\n  pip: |\r\n    six\r\n    attrs>=23\r\n"
    )
    seeds["valid-empty-lists.yaml"] = (
        b"name: fuzz\nbaseImage: debian:bookworm\npullSecret:\npackages:\n  apt: []\n  conda:\n  pip: ''\n"
    )
    seeds["valid-unicode-description.yaml"] = (
        "name: fuzz\ndescription: \"Ünïcødé ✓ 日本語 \\u00e9 \\U0001F600\"\nbaseImage: alpine\n"
        "packages:\n  apt:\n    - curl\n".encode()
    )
    seeds["valid-multiline-description.yaml"] = (
        b"name: fuzz\ndescription: >-\n  folded\n  description\n\n  text\nbaseImage: alpine\n"
        b"packages:\n  apt: |+\n    curl\n\n\n"
    )

    # Invalid in interesting ways.
    seeds["bad-folded-block.yaml"] = (
        b"name: fuzz\nbaseImage: alpine\npackages:\n  apt: >\n    curl\n    jq\n"
    )
    seeds["bad-several-per-line.yaml"] = (
        b"name: fuzz\nbaseImage: alpine\npackages:\n  apt: curl jq wget\n  pip:\n    - numpy pandas\n"
    )
    seeds["bad-duplicates.yaml"] = (
        b"name: fuzz\nbaseImage: alpine\npackages:\n  pip:\n    - NumPy\n    - numpy==1.0\n"
        b"  conda: |\n    numpy\n    conda-forge::numpy\n"
    )
    seeds["bad-duplicate-key.yaml"] = b"name: fuzz\nname: other\nbaseImage: alpine\n"
    seeds["bad-types.yaml"] = (
        b"name: [fuzz]\nbaseImage: {a: b}\n? [complex, key]\n: value\npackages:\n  apt:\n    - {a: 1}\n    - [x]\n    -\n    - ''\n  pip: {x: y}\n  npm: [left-pad]\n"
    )
    seeds["bad-typos.yaml"] = b"nmae: fuzz\nbaseimage: alpine\npackage:\n  aptt: [curl]\n"
    seeds["bad-numbers.yaml"] = b"name: 1.10\nbaseImage: 0x1F\npackages:\n  pip: [1e3, .inf, true, ~, 007]\n"
    seeds["bad-base-images.yaml"] = (
        b"name: fuzz\nbaseImage: 'UPPER/Case:tag with space@sha256:zz'\npullSecret: 'not a secret!'\n"
    )
    seeds["bad-shell-metachars.yaml"] = (
        b"name: fuzz\nbaseImage: alpine\npackages:\n  apt:\n    - 'curl; rm -rf /'\n    - '$(id)'\n    - \"`id`\"\n  pip:\n    - 'x==1 \\\\\\n && evil'\n"
    )
    seeds["bad-tabs.yaml"] = b"name: fuzz\nbaseImage: alpine\npackages:\n\tapt:\n\t\t- curl\n"
    seeds["bad-multi-doc.yaml"] = b"---\nname: fuzz\nbaseImage: alpine\n---\nname: two\n...\n"
    seeds["bad-scalar-doc.yaml"] = b"just a string\n"
    seeds["bad-list-doc.yaml"] = b"- name: fuzz\n- baseImage: alpine\n"
    seeds["empty.yaml"] = b""
    seeds["only-comments.yaml"] = b"# nothing here\n   # at all\n"
    seeds["nul-bytes.yaml"] = b"name: fu\x00zz\nbaseImage: alp\x00ine\n"
    seeds["tags.yaml"] = (
        b"name: !!str fuzz\nbaseImage: !custom alpine\npackages: !!map\n  apt: !!seq [curl]\n  pip: !!binary aGVsbG8=\n"
    )
    seeds["directives.yaml"] = b"%YAML 1.2\n%TAG ! tag:example.com,2000:\n---\nname: fuzz\nbaseImage: alpine\n"

    # Alias bombs and anchor/alias tricks.
    bomb = [b"a0: &a0 [lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
    for i in range(1, 10):
        prev = f"*a{i - 1}".encode()
        bomb.append(f"a{i}: &a{i} [".encode() + b", ".join([prev] * 9) + b"]")
    seeds["alias-bomb.yaml"] = b"\n".join(bomb) + b"\nname: fuzz\nbaseImage: alpine\n"
    seeds["alias-in-packages.yaml"] = (
        b"name: fuzz\nbaseImage: alpine\npackages:\n  apt: &x [curl]\n  pip: *x\n"
    )
    seeds["alias-merge-key.yaml"] = (
        b"base: &b {name: fuzz, baseImage: alpine}\n<<: *b\n"
    )
    seeds["alias-flow-nospace.yaml"] = b"{name: fuzz,baseImage: alpine,packages: {apt: [&a curl,*a]}}\n"
    seeds["alias-after-tag.yaml"] = b"name: !!str &n fuzz\nbaseImage: *n\n"
    seeds["alias-looking-text.yaml"] = (
        b"name: fuzz\ndescription: 'R&D *bold* & more'\nbaseImage: alpine\npackages:\n  pip:\n    - \"pkg[a]&b\"\n"
    )

    # Deep nesting, every way YAML allows.
    seeds["deep-flow-seq.yaml"] = b"name: fuzz\nbaseImage: alpine\npackages:\n  apt: " + b"[" * 3000 + b"]" * 3000 + b"\n"
    seeds["deep-flow-map.yaml"] = b"{a: " * 2000 + b"b" + b"}" * 2000 + b"\n"
    seeds["deep-flow-unclosed.yaml"] = b"[{" * 4000 + b"\n"
    seeds["deep-block-map.yaml"] = b"".join(
        b" " * i + f"k{i}:\n".encode() for i in range(300)
    ) + b" " * 300 + b"leaf\n"
    seeds["deep-block-seq.yaml"] = b"".join(b"  " * i + b"-\n" for i in range(200)) + b"  " * 200 + b"- x\n"
    seeds["deep-compact-seq.yaml"] = b"- " * 3000 + b"x\n"

    # Huge strings and sizes around the limit.
    seeds["huge-description.yaml"] = (
        b"name: fuzz\nbaseImage: alpine\ndescription: " + b"x" * 60000 + b"\n"
    )
    seeds["huge-package-name.yaml"] = (
        b"name: fuzz\nbaseImage: alpine\npackages:\n  pip:\n    - " + b"a" * 20000 + b"\n  apt: |\n    " + b"b" * 20000 + b"\n"
    )
    seeds["huge-block-many-lines.yaml"] = (
        b"name: fuzz\nbaseImage: alpine\npackages:\n  apt: |\n"
        + b"".join(f"    pkg{i}\n".encode() for i in range(5000))
    )
    seeds["huge-base-image.yaml"] = b"name: fuzz\nbaseImage: " + b"a/" * 20000 + b"b\n"
    seeds["huge-name.yaml"] = b"name: " + b"f" * 30000 + b"\nbaseImage: alpine\n"
    over = b"name: fuzz\nbaseImage: alpine\ndescription: |\n"
    over += b"  " + b"y" * (MAX_SPEC_BYTES + 1 - len(over) - 3) + b"\n"
    assert len(over) == MAX_SPEC_BYTES + 1, len(over)
    seeds["over-limit.yaml"] = over
    exact = b"name: fuzz\nbaseImage: alpine\ndescription: |\n"
    exact += b"  " + b"y" * (MAX_SPEC_BYTES - len(exact) - 3) + b"\n"
    assert len(exact) == MAX_SPEC_BYTES
    seeds["at-limit.yaml"] = exact
    seeds["many-keys.yaml"] = b"".join(f"k{i}: v\n".encode() for i in range(6000))
    seeds["many-events.yaml"] = b"name: fuzz\nbaseImage: alpine\nx: [" + b"1," * 30000 + b"1]\n"

    # Invalid UTF-8 in every position that matters for the reported line/column.
    seeds["utf8-invalid-start.yaml"] = b"\xff\xfename: fuzz\n"
    seeds["utf8-invalid-line3.yaml"] = "name: fuzz\nbaseImage: alpine\ndescription: caf\u00e9 ".encode() + b"\xc3\x28\n"
    seeds["utf8-truncated-end.yaml"] = "name: fuzz\nbaseImage: alpine\ndescription: \u65e5".encode()[:-1]
    seeds["utf8-surrogate.yaml"] = b"name: fuzz\nbaseImage: alpine\ndescription: \xed\xa0\x80\n"
    seeds["utf8-overlong.yaml"] = b"name: fuzz\n\xc0\xaf: x\n"
    seeds["utf16-bom.yaml"] = "name: fuzz\nbaseImage: alpine\n".encode("utf-16")
    seeds["utf8-multibyte-columns.yaml"] = (
        "name: fuzz\nbaseImage: alpine\npackages:\n  apt: |\n    \u00e9\u00e9 \u65e5\u672c  # \u2713\n    jq \U0001F600\n".encode()
    )

    for name, data in sorted(seeds.items()):
        (SEEDS / name).write_bytes(data)
    print(f"wrote {len(seeds)} seeds to {SEEDS.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
