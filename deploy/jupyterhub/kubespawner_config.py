# jupyterhub_config.py fragment: KubeSpawner's profile list from Kiln's catalogue.
# kiln_catalog.py sits next to this file (or on the hub's PYTHONPATH).
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from kiln_catalog import kubespawner_profile_list  # noqa: E402

c = get_config()  # noqa: F821
c.JupyterHub.spawner_class = "kubespawner.KubeSpawner"
c.KubeSpawner.profile_list = kubespawner_profile_list(
    os.environ.get("KILN_URL", "http://kiln.kiln.svc:8080"),
    ttl=60,
    cache_file=os.environ.get("KILN_CATALOG_CACHE", "/srv/jupyterhub/kiln-profiles.json"),
)
