"""The publisher: a TUF repository (the registry) on disk, its keys and its signing policy.

What it does: creates and maintains a TUF 1.0 repository (roles root, targets, snapshot,
timestamp, optional delegated targets roles; Ed25519 keys; thresholds; consistent snapshots;
content-addressed targets) with python-tuf's ``tuf.api.metadata``. What it does not do: serve the
repository (``edgeagent.registry.server``) or verify it as a device would (the client side).

Modules:

- ``policy`` [pure]: ``policy.toml`` parsing/rendering, version bumps, expiry from ``now``,
  target name validation, the target ``custom`` schema (ADR-0003).
- ``keys``: one Ed25519 private key per file under the keys folder (``signing/README.md``).
- ``repo``: ``Repository``, the only code that writes a repository.

Repository layout (ADR-0003; users and tests rely on it)::

    DIR/metadata/N.root.json        every root version; root.json is a copy of the newest
    DIR/metadata/N.targets.json     consistent snapshots (also N.<delegated-role>.json)
    DIR/metadata/N.snapshot.json
    DIR/metadata/timestamp.json
    DIR/targets/<sha256>.<NAME>     content-addressed target files
    DIR/keys/                       private keys + policy.toml (default keys dir; never served)

Usage note (for the client side and its tests)::

    from edgeagent.publisher.policy import target_custom
    from edgeagent.publisher.repo import Repository

    repo = Repository.init(tmp / "repo", root_threshold=2, root_keys=3)   # now=None -> UTC now
    repo.add_target(image, "hello", target_custom(version="1.0.0", kind="hvt", mem_mb=32))
    trust = repo.root_path                  # DIR/metadata/1.root.json: give this to the device
    repo.rotate_key("targets")              # -> root N+1, targets/snapshot/timestamp re-signed
    repo.refresh(snapshot=True)             # timer job: new timestamp (and snapshot)
    repo.add_delegation("fleet", ["fleet-*"], terminating=True)
    repo.add_delegated_target("fleet", image, "fleet-app", target_custom(version="2"))
    # Expired metadata for freeze tests: pass now=datetime(2000, 1, 1, tzinfo=UTC).
    repo = Repository.open(tmp / "repo")    # later, from the files alone

Serve it with ``edgeagent.registry.server.serve_registry(root, "127.0.0.1", 0,
task_status=...)`` (``started`` value: ``(host, port)``) or ``edgeagent repo serve DIR --listen
127.0.0.1:0`` (prints ``serving DIR at http://127.0.0.1:PORT/`` on stdout, first line).
"""
