"""`sam3d-client`: photo to 3D model or depth map from the command line.

    sam3d-client generate photo.jpg -o model.glb [--format ply|glb|obj|stl|usdz] [--no-texture]
                                                 [--seed N] [--mask mask.png ...]
    sam3d-client depth photo.jpg -o depth.png [--output png|png16|npy|color]
    sam3d-client status JOB
    sam3d-client health

The server is `--url` or SAM3D_URL (http://localhost:8000), the key SAM3D_API_KEY. Jobs are
submitted asynchronously and followed with a progress bar; a full queue (503) is retried after
its Retry-After. Exit status: 0 done, 1 the server or the job failed (its message on stderr),
2 a usage error or no server.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from tqdm import tqdm

from . import Client, ServerError, encode_file

FORMATS = {".glb": "glb", ".ply": "ply", ".zip": "obj", ".obj": "obj", ".stl": "stl",
           ".usdz": "usdz"}
DEPTH_OUTPUTS = ("png", "png16", "npy", "color")


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    client = Client(args.url, os.environ.get("SAM3D_API_KEY"))
    try:
        return args.command(client, args)
    except ServerError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1 if exc.status else 2
    except OSError as exc:  # a photo, mask or output path that cannot be used
        print(f"error: {exc}", file=sys.stderr)
        return 2


def parser() -> argparse.ArgumentParser:
    main_parser = argparse.ArgumentParser(prog="sam3d-client", description=__doc__.split(
        "\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    main_parser.add_argument("--url", default=os.environ.get("SAM3D_URL",
                                                             "http://localhost:8000"),
                             help="server URL (SAM3D_URL; default http://localhost:8000)")
    commands = main_parser.add_subparsers(required=True, metavar="COMMAND")

    generate = commands.add_parser("generate", help="photo to a 3D model")
    generate.add_argument("photo", type=Path)
    generate.add_argument("-o", "--out", type=Path, default=None,
                          help="file to write (default model.<format>)")
    generate.add_argument("--format", choices=sorted(set(FORMATS.values())),
                          help="default: from the -o suffix, else glb")
    generate.add_argument("--no-texture", action="store_true",
                          help="vertex colours instead of a baked texture (faster)")
    generate.add_argument("--seed", type=int)
    generate.add_argument("--mask", type=Path, action="append", default=[],
                          help="mask image (non-zero = object); repeat for one scene of "
                               "several objects")
    generate.set_defaults(command=run_generate)

    depth = commands.add_parser("depth", help="photo to a depth map")
    depth.add_argument("photo", type=Path)
    depth.add_argument("-o", "--out", type=Path, default=None,
                       help="file to write (default depth.png, or depth.npy)")
    depth.add_argument("--output", choices=DEPTH_OUTPUTS,
                       help="default: npy for a .npy file, else png")
    depth.add_argument("--processing-res", type=int)
    depth.set_defaults(command=run_depth)

    status = commands.add_parser("status", help="a job's status, as JSON")
    status.add_argument("job_id")
    status.set_defaults(command=lambda client, args: show(client.status(args.job_id)))

    health = commands.add_parser("health", help="the server's health, as JSON")
    health.set_defaults(command=run_health)
    return main_parser


def run_generate(client: Client, args) -> int:
    output_format = args.format or FORMATS.get((args.out or Path()).suffix.lower(), "glb")
    out = args.out or Path(f"model.{'zip' if output_format == 'obj' else output_format}")
    body = {"image": encode_file(args.photo), "output_format": output_format,
            "with_texture": not args.no_texture}
    if args.seed is not None:
        body["seed"] = args.seed
    if len(args.mask) == 1:
        body["mask"] = encode_file(args.mask[0])
    elif args.mask:
        body["masks"] = [encode_file(mask) for mask in args.mask]
    return run_job(client, "generate", body, out)


def run_depth(client: Client, args) -> int:
    output = args.output or ("npy" if args.out and args.out.suffix.lower() == ".npy" else "png")
    out = args.out or Path(f"depth.{'npy' if output == 'npy' else 'png'}")
    body = {"image": encode_file(args.photo), "output": output}
    if args.processing_res is not None:
        body["processing_res"] = args.processing_res
    return run_job(client, "depth", body, out)


def run_job(client: Client, endpoint: str, body: dict, out: Path) -> int:
    job = client.submit(endpoint, body)
    with tqdm(total=100, unit="%", file=sys.stderr, dynamic_ncols=True,
              bar_format="{desc} {percentage:3.0f}%|{bar}| {elapsed}") as bar:
        def update(status: dict) -> None:
            if status.get("status") == "queued":
                bar.set_description(f"queued, position {status.get('position', '?')}")
            else:
                bar.set_description(status.get("stage") or status.get("status", ""))
            bar.update(round(100 * float(status.get("progress") or 0)) - bar.n)

        final = client.follow(job["job_id"], update)
    if final["status"] != "completed":
        reason = final.get("error") or final.get("message") or final["status"]
        print(f"error: job {job['job_id']} {final['status']}: {reason}", file=sys.stderr)
        return 1
    client.download(job["job_id"], out)
    extra = {key: final[key] for key in ("min", "max", "vertices", "faces", "gaussians")
             if key in final}
    print(f"{out} ({out.stat().st_size} bytes, job {job['job_id']}, "
          f"{final.get('processing_time', 0):.1f} s){' ' + json.dumps(extra) if extra else ''}")
    return 0


def run_health(client: Client, args) -> int:
    body = client.health()
    show(body)
    return 0 if body.get("status") in ("healthy", "loading") else 1


def show(body: dict) -> int:
    print(json.dumps(body, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
