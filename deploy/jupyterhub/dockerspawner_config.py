# jupyterhub_config.py fragment: DockerSpawner's allowed_images from Kiln's catalogue.
# kiln_catalog.py sits next to this file (or on the hub's PYTHONPATH).
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from kiln_catalog import dockerspawner_allowed_images  # noqa: E402

c = get_config()  # noqa: F821
c.JupyterHub.spawner_class = "dockerspawner.DockerSpawner"
c.DockerSpawner.allowed_images = dockerspawner_allowed_images(
    os.environ.get("KILN_URL", "http://127.0.0.1:8080"),
    ttl=60,
    cache_file=os.environ.get("KILN_CATALOG_CACHE", "/srv/jupyterhub/kiln-images.json"),
)
