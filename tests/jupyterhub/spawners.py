"""Run by tests/catalog.rs with a venv holding PyPI's jupyterhub, jupyterhub-kubespawner and
dockerspawner: feeds deploy/jupyterhub/kiln_catalog.py's callables to the real spawners and
prints what the spawners made of them as one JSON line.

argv: kiln_url cache_dir slug image_name
"""

import asyncio
import json
import os
import sys
import types

here = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(here, "..", "..", "deploy", "jupyterhub"))

import kiln_catalog  # noqa: E402

# KubeSpawner loads a client configuration when constructed; no cluster is ever contacted
# (nothing is started), so a configuration naming an unused local port is enough. The client
# library reads KUBECONFIG when imported.
KUBECONFIG = """apiVersion: v1
kind: Config
clusters: [{name: none, cluster: {server: "https://127.0.0.1:9"}}]
users: [{name: none, user: {token: unused}}]
contexts: [{name: none, context: {cluster: none, user: none}}]
current-context: none
"""
_kubeconfig = os.path.join(sys.argv[2], "kubeconfig")
with open(_kubeconfig, "w", encoding="utf-8") as _f:
    _f.write(KUBECONFIG)
os.environ["KUBECONFIG"] = _kubeconfig

from dockerspawner import DockerSpawner  # noqa: E402
from kubespawner import KubeSpawner  # noqa: E402


def hub_user(name, groups=()):
    # The hub's user as the spawners read it (name, groups, admin); the spawners under test
    # are the real ones.
    return types.SimpleNamespace(
        name=name,
        escaped_name=name,
        admin=False,
        groups=[types.SimpleNamespace(name=g) for g in groups],
        url=f"/user/{name}/",
        id=1,
        orm_user=None,
        settings={},
    )


async def main():
    url, cache_dir, slug, image_name = sys.argv[1:5]
    report = {}
    profile_list = kiln_catalog.kubespawner_profile_list(
        url, ttl=0, timeout=5, cache_file=os.path.join(cache_dir, "profiles.json")
    )
    spawner = KubeSpawner(_mock=True, user=hub_user("alice"), profile_list=profile_list)
    profiles = await profile_list(spawner)
    report["profiles"] = profiles
    # KubeSpawner's own handling: initialize and validate the list, then load the profile
    # the user picked; the override sets the image.
    spawner.user_options = {"profile": slug}
    await spawner.load_user_options()
    report["kubespawner_image"] = spawner.image
    # The group-restricted image is offered to members only.
    member = KubeSpawner(_mock=True, user=hub_user("bob", ["physics"]), profile_list=profile_list)
    report["member_slugs"] = [p["slug"] for p in await profile_list(member)]
    report["nonmember_slugs"] = [p["slug"] for p in profiles]

    allowed = kiln_catalog.dockerspawner_allowed_images(
        url, ttl=0, timeout=5, cache_file=os.path.join(cache_dir, "images.json")
    )
    docker = DockerSpawner(user=hub_user("alice"), allowed_images=allowed)
    images = docker._get_allowed_images()
    report["dockerspawner_allowed"] = images
    # DockerSpawner's own check: the user's choice (a key) maps to the pinned image.
    key = next(k for k, v in images.items() if image_name in v)
    report["dockerspawner_checked"] = await docker.check_allowed(key)
    print(json.dumps(report))


asyncio.run(main())
