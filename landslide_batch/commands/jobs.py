"""``submit`` / ``status`` / ``logs``: region jobs on a Ray cluster; ``schedule``: post-disaster
runs over a STAC catalog; ``stac-item``: a finished job's outputs as a STAC item."""

from __future__ import annotations

import sys
from datetime import datetime
from pathlib import Path

from ..errors import ConfigError, LandslideBatchError


def register(sub) -> None:
    _register_submit(sub)

    st = sub.add_parser("status", help="status of a submitted job")
    st.add_argument("job_id")
    _address(st)
    _wait(st)
    st.set_defaults(func=_status)

    lg = sub.add_parser("logs", help="logs of a submitted job")
    lg.add_argument("job_id")
    _address(lg)
    lg.add_argument("--follow", action="store_true", help="stream until the job ends")
    lg.set_defaults(func=_logs)

    sc = sub.add_parser(
        "schedule",
        help="map new post-event scenes from a STAC catalog, pass after pass",
        description="Each AOI is an event mapped as one region job; a pass that finds new "
        "scenes for it runs the job again over all of them, which maps only the "
        "new ones (never a scene twice); see configs/schedule_example.yaml.",
    )
    sc.add_argument("schedule", type=Path, help="schedule YAML")
    sc.add_argument("--once", action="store_true", help="one pass, then exit (cron); prints the job ids started")
    sc.add_argument("--local", action="store_true", help="run the jobs in this process, not on the cluster")
    sc.set_defaults(func=_schedule)

    si = sub.add_parser("stac-item", help="describe a finished job's outputs as a STAC item (OUT/item.json)")
    si.add_argument("out_dir", help="output folder of a finished job (a path or an object-store URI)")
    si.add_argument("--id", dest="item_id", help="item id (default: the folder name)")
    si.add_argument(
        "--datetime",
        type=datetime.fromisoformat,
        help="acquisition time of the scene, ISO 8601 (default: when the job finished)",
    )
    si.add_argument(
        "--derived-from",
        metavar="HREF",
        action="append",
        default=[],
        help="a source scene's STAC item (repeat for each scene)",
    )
    si.add_argument("--publish", metavar="URI", help="copy outputs + item.json to this path or object-store URI")
    si.set_defaults(func=_stac_item)


def _register_submit(sub) -> None:
    s = sub.add_parser(
        "submit",
        help="submit a region job to a Ray cluster (Job Submission API)",
        description="Validate a job YAML here and run it on a Ray cluster as "
        "`landslide-batch run job.yaml --executor ray`. The job names object-store "
        "URIs the cluster can read; paths of this machine are refused, unless "
        "--upload-to uploads them first or --shared-fs says every node mounts them "
        "at the same place. Prints the job id.",
    )
    s.add_argument("job", type=Path, help="job YAML")
    _address(s)
    s.add_argument("--submission-id", help="job id (default: Ray picks one); the cluster refuses an id it knows")
    s.add_argument("--env", action="append", default=[], metavar="KEY=VALUE", help="job environment variable (repeat)")
    s.add_argument(
        "--forward-credentials",
        action="store_true",
        help="hand this shell's object-storage variables (AWS_*, GOOGLE_APPLICATION_CREDENTIALS, AZURE_STORAGE_*) "
        "to the job's driver and actors through Ray's runtime environment; never printed nor written to run.json "
        "(Ray's job info on the cluster does hold them)",
    )
    s.add_argument(
        "--ship-code",
        action="store_true",
        help="upload this landslide_batch package over the cluster's installed one (pure-Python changes)",
    )
    s.add_argument("--stac-item", action="store_true", help="write OUT/item.json after the run")
    s.add_argument("--publish", metavar="URI", help="also copy outputs + item.json to this path or object-store URI")
    s.add_argument(
        "--upload-to",
        metavar="URI",
        help="upload the job's local inputs (scene, models, ensemble, DEM, ...) to cluster storage, "
        "content-addressed as URI/sha256/<hash>/<name> (sent once), and submit their URIs",
    )
    s.add_argument(
        "--shared-fs",
        action="store_true",
        help="the job's paths are on storage every node mounts at the same path: submit them as they are",
    )
    _wait(s)
    s.set_defaults(func=_submit)


def _address(p) -> None:
    p.add_argument(
        "--address",
        help="Ray dashboard address, http://HEAD:8265 "
        "(default: RAY_API_SERVER_ADDRESS / RAY_ADDRESS / a local cluster)",
    )


def _wait(p) -> None:
    p.add_argument("--wait", action="store_true", help="wait for the job to end; exit 1 unless it succeeded")
    p.add_argument("--timeout", type=float, help="with --wait: give up after this many seconds")


def _env(pairs: list[str]) -> dict[str, str]:
    bad = [p for p in pairs if "=" not in p]
    if bad:
        raise ConfigError(f"--env takes KEY=VALUE, found {bad}")
    return dict(p.split("=", 1) for p in pairs)


def _report(submitter, job_id: str, args) -> int:
    status, message = submitter.wait(job_id, args.timeout) if args.wait else submitter.status(job_id)
    print(f"{job_id}: {status}" + (f" ({message})" if message else ""))
    return 1 if args.wait and status != "SUCCEEDED" else 0


def _submit(args) -> int:
    from ..jobs.submit import JobSubmission, RaySubmitter, StacOptions, prepare_job
    from ..jobs.upload import cluster_locations

    env = _env(args.env)
    if args.forward_credentials:
        from ..storage import credential_env

        forwarded = credential_env()
        print(f"forwarding {', '.join(forwarded) or 'no credential variable (none is set)'}", file=sys.stderr)
        env = {**forwarded, **env}  # an explicit --env wins
    submitter = RaySubmitter(args.address, env=env, ship_code=args.ship_code)
    stac = StacOptions(publish_to=args.publish) if args.stac_item or args.publish else None
    spec = prepare_job(args.job)
    if args.upload_to:
        submitter.client  # noqa: B018  (reach the cluster before uploading anything for it)
    spec, uploads = cluster_locations(spec, str(args.job), upload_to=args.upload_to, shared_fs=args.shared_fs)
    if uploads is not None:
        print(uploads.summary(), file=sys.stderr)
    job_id = submitter.submit(JobSubmission(spec, args.submission_id, stac))
    print(job_id)
    where = f" --address {args.address}" if args.address else ""
    print(f"follow with: landslide-batch logs {job_id}{where} --follow", file=sys.stderr)
    return _report(submitter, job_id, args) if args.wait else 0


def _status(args) -> int:
    from ..jobs.submit import RaySubmitter

    return _report(RaySubmitter(args.address), args.job_id, args)


def _logs(args) -> int:
    from ..jobs.submit import RaySubmitter

    submitter = RaySubmitter(args.address)
    if args.follow:
        submitter.follow(args.job_id, lambda chunk: print(chunk, end="", flush=True))
    else:
        print(submitter.logs(args.job_id), end="")
    return 0


def _schedule(args) -> int:
    from ..jobs.schedule import load_schedule, run_pass, run_schedule
    from ..jobs.submit import LocalRunner, RaySubmitter

    schedule = load_schedule(args.schedule)
    remote = schedule.config.submit
    on_cluster = not args.local and remote is not None
    submitter = (
        RaySubmitter(remote.address, env=remote.env, ship_code=remote.ship_code)
        if on_cluster and remote is not None
        else LocalRunner()
    )
    if on_cluster and isinstance(submitter, RaySubmitter) and remote is not None and remote.upload_to:
        submitter.client  # noqa: B018  (reach the cluster before uploading anything for it)
    if not args.once:
        run_schedule(schedule, submitter, remote=on_cluster)
        return 0
    failed: list[str] = []
    for job_id in run_pass(schedule, submitter, remote=on_cluster, failed=failed):
        print(job_id)
    if failed:  # cron must see a pass with a failed job: exit 2, as for the job's own error
        raise LandslideBatchError(f"{len(failed)} job(s) of this pass failed: {'; '.join(failed)}")
    return 0


def _stac_item(args) -> int:
    from ..jobs.stac import ITEM_FILE, write_item
    from ..jobs.storage import check_location

    out = check_location(args.out_dir, "stac-item")
    write_item(out, item_id=args.item_id, when=args.datetime, derived_from=args.derived_from, publish_to=args.publish)
    print(out / ITEM_FILE)
    if args.publish:
        print(f"{args.publish.rstrip('/')}/{ITEM_FILE}")
    return 0
