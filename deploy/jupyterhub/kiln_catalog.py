"""Kiln's image catalogue for JupyterHub spawners.

Copy this file next to ``jupyterhub_config.py`` (or onto the hub's ``PYTHONPATH``) and see
``kubespawner_config.py`` / ``dockerspawner_config.py`` for the two lines of configuration.

The lists come from Kiln's ``GET /api/v1/catalog`` (``?format=kubespawner`` or
``?format=dockerspawner``): every live, listed image, pinned by digest, so a server starts
exactly the image Kiln built and tested. Each answer is cached for ``ttl`` seconds, in memory
and in ``cache_file``; when Kiln does not answer (down, slow, an error status, a body that is
not the expected shape) the last good list is used, also after a hub restart, so users can
always start a server. Only when there never was a good list does the call raise.

Group filtering: an image whose spec lists ``catalog.groups`` is offered to members of one of
those groups only (JupyterHub groups, ``spawner.user.groups``); admins see every image.

Standard library only besides JupyterHub itself: the fetch runs in a thread so it never blocks
the hub's event loop.
"""

import asyncio
import json
import logging
import os
import tempfile
import time
import urllib.request

log = logging.getLogger("kiln_catalog")


class KilnCatalog:
    """One catalogue URL of one Kiln, with its cache."""

    def __init__(self, url, fmt, ttl=60.0, timeout=5.0, cache_file=None):
        self.url = url.rstrip("/")
        self.fmt = fmt
        self.ttl = ttl
        self.timeout = timeout
        self.cache_file = cache_file
        self._good = None
        self._fetched_at = 0.0
        if cache_file and os.path.exists(cache_file):
            try:
                with open(cache_file, encoding="utf-8") as f:
                    self._good = self._check(json.load(f))
            except (OSError, ValueError) as e:
                log.warning("ignoring unreadable Kiln catalogue cache %s: %s", cache_file, e)

    def _endpoint(self):
        return f"{self.url}/api/v1/catalog?format={self.fmt}"

    def _check(self, data):
        if self.fmt == "kubespawner":
            ok = isinstance(data, list) and all(
                isinstance(p, dict)
                and isinstance(p.get("slug"), str)
                and isinstance(p.get("kubespawner_override", {}).get("image"), str)
                for p in data
            )
        else:
            ok = isinstance(data, dict) and all(
                isinstance(k, str) and isinstance(v, str) for k, v in data.items()
            )
        if not ok:
            raise ValueError(f"Kiln's catalogue is not a {self.fmt} list")
        return data

    def _fetch_blocking(self):
        request = urllib.request.Request(self._endpoint(), headers={"Accept": "application/json"})
        with urllib.request.urlopen(request, timeout=self.timeout) as response:
            return self._check(json.loads(response.read().decode("utf-8")))

    def _save(self, data):
        if not self.cache_file:
            return
        directory = os.path.dirname(os.path.abspath(self.cache_file))
        try:
            fd, tmp = tempfile.mkstemp(dir=directory, prefix=".kiln-catalog-")
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                json.dump(data, f)
            os.replace(tmp, self.cache_file)
        except OSError as e:
            log.warning("could not write Kiln catalogue cache %s: %s", self.cache_file, e)

    def _fresh(self):
        return self._good is not None and time.monotonic() - self._fetched_at < self.ttl

    def _store(self, data):
        self._good = data
        self._fetched_at = time.monotonic()
        self._save(data)
        return data

    def get_blocking(self):
        """:meth:`get` for callers that cannot await (DockerSpawner calls its callable
        synchronously). With a last good list at hand inside the hub's event loop, it answers
        from that list at once and refreshes it in a worker thread, so the loop never waits on
        Kiln; otherwise it fetches (at most ``timeout`` seconds)."""
        if self._fresh():
            return self._good
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            loop = None
        if loop is not None and self._good is not None:
            if not getattr(self, "_refreshing", False):
                self._refreshing = True
                future = loop.run_in_executor(None, self._fetch_blocking)
                future.add_done_callback(self._refreshed)
            return self._good
        try:
            return self._store(self._fetch_blocking())
        except Exception as e:
            return self._fallback(e)

    def _refreshed(self, future):
        self._refreshing = False
        try:
            self._store(future.result())
        except Exception as e:
            log.warning("Kiln's catalogue is unavailable (%s); keeping the last good list", e)

    def _fallback(self, error):
        if self._good is None:
            raise RuntimeError(
                f"Kiln's catalogue at {self._endpoint()} is unavailable and no earlier list is cached: {error}"
            ) from error
        log.warning("Kiln's catalogue is unavailable (%s); using the last good list", error)
        return self._good

    async def get(self):
        """The catalogue: fresh, cached, or the last good one when Kiln does not answer."""
        if self._fresh():
            return self._good
        try:
            data = await asyncio.get_running_loop().run_in_executor(None, self._fetch_blocking)
        except Exception as e:  # any failure to get a good list means: use the last good one
            return self._fallback(e)
        return self._store(data)


def _user_groups(spawner):
    user = getattr(spawner, "user", None)
    return {getattr(g, "name", g) for g in (getattr(user, "groups", None) or [])}


def _may_use(spawner, groups):
    if not groups:
        return True
    if getattr(getattr(spawner, "user", None), "admin", False):
        return True
    return bool(_user_groups(spawner) & set(groups))


def kubespawner_profile_list(url, ttl=60.0, timeout=5.0, cache_file=None):
    """An async callable for ``c.KubeSpawner.profile_list``."""
    catalog = KilnCatalog(url, "kubespawner", ttl=ttl, timeout=timeout, cache_file=cache_file)

    async def profile_list(spawner):
        profiles = await catalog.get()
        out = []
        for profile in profiles:
            if not _may_use(spawner, profile.get("kiln_groups") or []):
                continue
            profile = {k: v for k, v in profile.items() if k != "kiln_groups"}
            profile["kubespawner_override"] = dict(profile["kubespawner_override"])
            out.append(profile)
        return out

    profile_list.catalog = catalog
    return profile_list


def dockerspawner_allowed_images(url, ttl=60.0, timeout=5.0, cache_file=None):
    """A callable for ``c.DockerSpawner.allowed_images`` (display name -> image).

    DockerSpawner calls it synchronously (``_get_allowed_images``), so it answers from the
    cache and refreshes in a thread (:meth:`KilnCatalog.get_blocking`).

    DockerSpawner's dict shape carries no groups, so every listed image is offered; use
    KubeSpawner's list (or a spec's ``catalog.hidden``) where groups matter.
    """
    catalog = KilnCatalog(url, "dockerspawner", ttl=ttl, timeout=timeout, cache_file=cache_file)

    def allowed_images(spawner):
        return dict(catalog.get_blocking())

    allowed_images.catalog = catalog
    return allowed_images
