"""`sam3d-client`: photo to 3D model, depth map or surface normals from the command line.

    sam3d-client generate photo.jpg -o model.glb [--format ply|glb|obj|stl|usdz] [--no-texture]
                                                 [--seed N] [--mask mask.png ...]
    sam3d-client depth photo.jpg -o depth.png [--output png|png16|npy|color|glb|ply]
    sam3d-client depth photo.jpg -o relief.glb [--fov-degrees 60] [--normal-model normal-d-v1-1]
                                                                    a relief to turn in 3D
    sam3d-client normal photo.jpg -o normals.png [--output png|png16|npy] [--model NAME]
    sam3d-client depth clip.mp4 -o depth_video.zip   a video (mp4, mov, webm; or --video-url):
                                                     the maps as mp4 and npz, zipped
    sam3d-client generate --image-url https://example.com/photo.jpg -o model.glb
    sam3d-client segment photo.jpg -o mask.png   the mask a 3D job would use, at once
    sam3d-client wait JOB [-o FILE]       follow a job submitted earlier, then download it
    sam3d-client download JOB [-o FILE]   a finished job's file
    sam3d-client cancel JOB
    sam3d-client status JOB
    sam3d-client health

The server is `--url` or SAM3D_URL (http://localhost:8000), the key `--api-key` or
SAM3D_API_KEY. The job's id is printed as soon as the server accepts it; Ctrl-C leaves the
job running on the server (unless --cancel-on-interrupt) and prints how to come back to it.
A full queue (503) is retried after its Retry-After. Exit status: 0 done, 1 the server or
the job failed (its message on stderr), 2 a usage error or no server, 130 interrupted.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
from pathlib import Path

from tqdm import tqdm

from . import (DEPTH_SUFFIXES, GENERATE_SUFFIXES, NORMAL_SUFFIXES, VIDEO_SUFFIXES, Client,
               OutputPathError, ServerError, __version__, check_output_path, encode_file)

DEFAULT_URL = "http://localhost:8000"
INTERRUPTED = 130  # 128 + SIGINT, as shells report it
# a depth job's -o suffix -> the output it asks for (.png: png, the default)
# an -o suffix -> the output format it asks for (.obj too: refused, the OBJ comes zipped)
SUFFIX_FORMATS = {".glb": "glb", ".ply": "ply", ".zip": "obj", ".obj": "obj", ".stl": "stl",
                  ".usdz": "usdz"}


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    client = Client(args.url or os.environ.get("SAM3D_URL") or DEFAULT_URL,
                    args.api_key or os.environ.get("SAM3D_API_KEY"))
    try:
        return args.command(client, args)
    except ServerError as exc:
        hint = ""
        if exc.status == 401:  # say where the key comes from, and whether one was sent
            hint = (" — the key was refused: check --api-key or SAM3D_API_KEY"
                    if "Authorization" in client.session.headers else
                    " — this server needs its API key: set SAM3D_API_KEY or pass --api-key")
        print(f"error: {exc}{hint}", file=sys.stderr)
        return 1 if exc.status else 2
    except (OSError, OutputPathError) as exc:  # a photo, mask or output path unusable
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # before a job was accepted, or a second Ctrl-C
        print("interrupted", file=sys.stderr)
        return INTERRUPTED


def parser() -> argparse.ArgumentParser:
    main_parser = argparse.ArgumentParser(prog="sam3d-client", description=__doc__.split(
        "\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    main_parser.add_argument("--version", action="version",
                             version=f"sam3d-client {__version__}")
    main_parser.add_argument("--url", help=f"server URL (SAM3D_URL; default {DEFAULT_URL})")
    main_parser.add_argument("--api-key", help="the server's API key (SAM3D_API_KEY, which "
                             "keeps it out of the process list)")
    commands = main_parser.add_subparsers(required=True, metavar="COMMAND")

    generate = commands.add_parser("generate", help="photo to a 3D model")
    add_image_arguments(generate)
    generate.add_argument("-o", "--out", type=Path, default=None,
                          help="file to write (default model.<format>; OBJ comes as a .zip)")
    generate.add_argument("--format", choices=sorted(GENERATE_SUFFIXES),
                          help="default: from the -o suffix, else glb")
    generate.add_argument("--no-texture", action="store_true",
                          help="vertex colours instead of a baked texture (faster)")
    generate.add_argument("--seed", type=int)
    generate.add_argument("--mask", type=Path, action="append", default=[],
                          help="mask image (non-zero = object); repeat for one scene of "
                               "several objects")
    generate.set_defaults(command=run_generate)

    for task, what, stem, suffixes in (("depth", "a depth map", "depth", DEPTH_SUFFIXES),
                                       ("normal", "surface normals", "normals", NORMAL_SUFFIXES)):
        command = commands.add_parser(task, help=f"photo or video to {what}")
        add_image_arguments(command, video=True)
        command.add_argument("-o", "--out", type=Path, default=None,
                             help=f"file to write (default {stem}.png, or as --output says; "
                             f"for a video {task}_video.zip)")
        command.add_argument("--output", choices=sorted(suffixes),
                             help="default: from the -o suffix (.npy, .glb, .ply), else png")
        served = "Lotus's or Depth Anything V2's" if task == "depth" else "Lotus's"
        command.add_argument("--model", help=f"which {task} model, {served} (`health` "
                             "lists those served; default: the server's)")
        command.add_argument("--processing-res", type=int)
        command.add_argument("--seed", type=int, help="seeds the VAE sample and a "
                             "generative (-g-) model's noise")
        if task == "depth":
            command.add_argument("--fov-degrees", type=float,
                                 help="glb, ply: the field of view assumed (server default 60)")
            command.add_argument("--normal-model", help="glb, ply: light the relief with this "
                                 "Lotus normal model's normals (`health` lists those served)")
        command.set_defaults(command=run_map, task=task, what=what, stem=stem,
                             suffixes=suffixes)

    segment = commands.add_parser("segment", help="the mask a 3D job would use for the "
                                  "photo (to check, edit, then send with generate --mask)")
    add_photo_arguments(segment)
    segment.add_argument("-o", "--out", type=Path, default=Path("mask.png"),
                         help="file to write (default mask.png)")
    segment.set_defaults(command=run_segment)

    wait = commands.add_parser("wait", help="follow a job until it finishes, then download "
                               "its file")
    wait.add_argument("job_id")
    wait.add_argument("-o", "--out", type=Path, help="file to write (default: the "
                      "server's name for it, in this folder)")
    wait.add_argument("--cancel-on-interrupt", action="store_true",
                      help="cancel the job on Ctrl-C (default: it goes on)")
    wait.set_defaults(command=run_wait)

    download = commands.add_parser("download", help="a finished job's file")
    download.add_argument("job_id")
    download.add_argument("-o", "--out", type=Path, help="file to write (default: the "
                          "server's name for it, in this folder)")
    download.set_defaults(command=run_download)

    cancel = commands.add_parser("cancel", help="cancel a job (a running one stops at its "
                                 "next stage)")
    cancel.add_argument("job_id")
    cancel.set_defaults(command=run_cancel)

    status = commands.add_parser("status", help="a job's status, as JSON")
    status.add_argument("job_id")
    status.set_defaults(command=lambda client, args: show(client.status(args.job_id)))

    health = commands.add_parser("health", help="the server's health, as JSON")
    health.set_defaults(command=run_health)
    return main_parser


def add_photo_arguments(command: argparse.ArgumentParser, video: bool = False) -> None:
    source = command.add_mutually_exclusive_group(required=True)
    source.add_argument("photo", type=Path, nargs="?", help="the photo to send" + (
        f" (a {', '.join(VIDEO_SUFFIXES)} file is sent as a video)" if video else ""))
    source.add_argument("--image-url", help="an http(s) URL the server fetches the photo "
                        "from, instead of a file")
    if video:
        source.add_argument("--video-url", help="an http(s) URL the server fetches a video "
                            "from")


def add_image_arguments(command: argparse.ArgumentParser, video: bool = False) -> None:
    """A job's photo (or video), and what Ctrl-C does to the job."""
    add_photo_arguments(command, video)
    command.add_argument("--cancel-on-interrupt", action="store_true",
                         help="cancel the job on Ctrl-C (default: it goes on, and the "
                              "command to come back to it is printed)")


def image_body(args) -> dict:
    if args.image_url is not None:
        return {"image_url": args.image_url}
    if is_video(args):
        return ({"video_url": args.video_url} if getattr(args, "video_url", None) is not None
                else {"video": encode_file(args.photo)})
    return {"image": encode_file(args.photo)}


def is_video(args) -> bool:
    """A --video-url, or a file whose suffix is a video's."""
    return getattr(args, "video_url", None) is not None or (
        args.photo is not None and args.photo.suffix.lower() in VIDEO_SUFFIXES)


def run_generate(client: Client, args) -> int:
    output_format = args.format or SUFFIX_FORMATS.get((args.out or Path()).suffix.lower(),
                                                      "glb")
    suffix = GENERATE_SUFFIXES[output_format]
    out = check_output_path(args.out or Path("model" + suffix), suffix,
                            f"output_format {output_format}"
                            + (" (a zip of the mesh, its material and texture)"
                               if output_format == "obj" else ""))
    body = {**image_body(args), "output_format": output_format,
            "with_texture": not args.no_texture}
    if args.seed is not None:
        body["seed"] = args.seed
    if len(args.mask) == 1:
        body["mask"] = encode_file(args.mask[0])
    elif args.mask:
        body["masks"] = [encode_file(mask) for mask in args.mask]
    return run_job(client, args, "generate", body, out)


def run_map(client: Client, args) -> int:
    """`depth` and `normal`: one map of the photo, by Lotus or Depth Anything V2 (depth also
    in 3D: glb, ply), or of each frame of a video (a zip of the maps as mp4 and npz)."""
    if is_video(args):
        if args.output is not None:
            raise OutputPathError(f"--output does not apply to a video: its result is a zip "
                                  f"of {args.task}.mp4 and {args.task}.npz")
        out = check_output_path(args.out or Path(f"{args.task}_video.zip"), ".zip",
                                f"a video's result (its {args.task} maps as mp4 and npz, "
                                "zipped)")
        body = image_body(args)
    else:
        by_suffix = {suffix: output for output, suffix in args.suffixes.items()
                     if suffix != ".png"}
        output = args.output or by_suffix.get((args.out or Path()).suffix.lower(), "png")
        suffix = args.suffixes[output]
        stem = "relief" if output in ("glb", "ply") else args.stem
        out = check_output_path(args.out or Path(stem + suffix), suffix,
                                f"{args.what} (output {output})")
        body = {**image_body(args), "output": output}
    for name in ("model", "processing_res", "seed", "fov_degrees", "normal_model"):
        if getattr(args, name, None) is not None:
            body[name] = getattr(args, name)
    return run_job(client, args, args.task, body, out)


def run_segment(client: Client, args) -> int:
    out = check_output_path(args.out, ".png", "the mask")
    answer = client.segment(args.photo, image_url=args.image_url)
    partial = out.with_name(out.name + ".part")
    partial.write_bytes(answer["mask"])
    os.replace(partial, out)
    print(f"{out} ({answer.get('width', '?')}x{answer.get('height', '?')}, from "
          f"{answer.get('source', '?')})")
    return 0


def run_job(client: Client, args, endpoint: str, body: dict, out: Path) -> int:
    """Submit, say the id at once, then follow and download as `wait` does."""
    args.pipeline = NOTICE_PIPELINES.get(endpoint)
    job = client.submit(endpoint, body)
    print(f"job {job['job_id']} {job.get('status', 'queued')} (position "
          f"{job.get('position', '?')}); resume with: "
          f"{resume_command(args, 'wait', job['job_id'], out)}", file=sys.stderr, flush=True)
    return follow_and_download(client, args, job["job_id"], out)


def run_wait(client: Client, args) -> int:
    if args.out is not None:
        check_output_path(args.out)  # its suffix is checked against the file when it comes
    return follow_and_download(client, args, args.job_id, args.out)


def follow_and_download(client: Client, args, job_id: str, out: Path | None) -> int:
    """Follow the job to its end and download its file. Ctrl-C or a lost connection leave
    the job on the server and say how to come back to it."""
    last = {"status": "queued"}
    try:
        with Progress(job_id) as progress:
            def update(status: dict) -> None:
                last.update(status)
                progress.show(status)

            final = client.follow(job_id, update)
        if final["status"] != "completed":
            reason = final.get("error") or final.get("message") or final["status"]
            print(f"error: job {job_id} {final['status']}: {reason}", file=sys.stderr)
            return 1
        last = final
        written = client.download(job_id, out)
    except KeyboardInterrupt:
        return interrupted(client, args, job_id, last["status"], out)
    except ServerError as exc:
        if exc.status is not None:
            raise
        print(f"error: {exc}\njob {job_id} is still on the server; resume with: "
              f"{resume_command(args, resume_verb(last['status']), job_id, out)}",
              file=sys.stderr)
        return 2
    extra = {key: final[key] for key in ("model", "frames", "fps", "min", "max", "fov_degrees",
                                         "normals", "frame", "range", "vertices", "faces",
                                         "gaussians") if key in final}
    print(f"{written} ({written.stat().st_size} bytes, job {job_id}, "
          f"{number(final.get('processing_time')):.1f} s)"
          f"{' ' + json.dumps(extra) if extra else ''}")
    print_notices(client, getattr(args, "pipeline", None))
    return 0


def number(value) -> float:
    """A figure from the server's answer, 0 for anything that is not one."""
    try:
        return float(value or 0)
    except (TypeError, ValueError):
        return 0.0


NOTICE_PIPELINES = {"generate": "sam3d", "depth": "lotus", "normal": "lotus"}


def print_notices(client: Client, pipeline: str | None) -> None:
    """After a result, what the server says a user must know before trusting it (its
    /health notices: test weights whose maps are noise, ...), for the job's model (or every
    model's, for a job followed by id); nothing if /health cannot be read."""
    try:
        notices = client.health().get("notices")
    except ServerError:
        return
    if not isinstance(notices, dict):
        return
    models = set(NOTICE_PIPELINES.values()) | {"segment"}
    for name, notice in notices.items():
        if isinstance(notice, str) and (name == pipeline or pipeline is None and name in models):
            print(f"note ({name}): {' '.join(notice.split())[:500]}", file=sys.stderr)


def interrupted(client: Client, args, job_id: str, state: str, out: Path | None) -> int:
    """Ctrl-C: no traceback; cancel the job only if asked to, else say how to resume."""
    if args.cancel_on_interrupt and state not in ("completed", "failed", "cancelled"):
        try:
            answer = client.cancel(job_id)
        except ServerError as exc:
            print(f"interrupted; cancelling job {job_id} failed: {exc}", file=sys.stderr)
        else:
            done = ("cancelled" if answer.get("status") == "cancelled"
                    else "cancel requested: it stops at its next stage")
            print(f"interrupted: job {job_id} {done}", file=sys.stderr)
            return INTERRUPTED
    print(f"interrupted: job {job_id} is {state} on the server; resume with: "
          f"{resume_command(args, resume_verb(state), job_id, out)}", file=sys.stderr)
    return INTERRUPTED


def resume_verb(state: str) -> str:
    return "download" if state == "completed" else "wait"


def resume_command(args, verb: str, job_id: str, out: Path | None) -> str:
    """The command that comes back to the job; the URL only where --url chose it (the key
    never: it stays where it was, SAM3D_API_KEY or the user's own record)."""
    words = ["sam3d-client", *(["--url", args.url] if args.url else []), verb, job_id]
    if out is not None:
        words += ["-o", str(out)]
    return shlex.join(words)


def run_download(client: Client, args) -> int:
    written = client.download(args.job_id, args.out)
    print(f"{written} ({written.stat().st_size} bytes, job {args.job_id})")
    return 0


def run_cancel(client: Client, args) -> int:
    answer = client.cancel(args.job_id)
    print(f"job {args.job_id}: {answer.get('message') or answer.get('status')}")
    return 0


def run_health(client: Client, args) -> int:
    body = client.health()
    show(body)
    return 0 if body.get("status") in ("healthy", "loading") else 1


def show(body: dict) -> int:
    print(json.dumps(body, indent=2))
    return 0


class Progress:
    """A job's progress on stderr: a bar on a terminal; elsewhere (a log, a pipe, CI) one
    plain line each time the state, position, stage or percentage changes."""

    def __init__(self, job_id: str):
        self.job_id, self.bar, self.last = job_id, None, None

    def __enter__(self) -> "Progress":
        if sys.stderr.isatty():
            self.bar = tqdm(total=100, unit="%", file=sys.stderr, dynamic_ncols=True,
                            bar_format="{desc} {percentage:3.0f}%|{bar}| {elapsed}")
        return self

    def __exit__(self, *exc) -> None:
        if self.bar is not None:
            self.bar.close()

    def show(self, status: dict) -> None:
        state = status.get("status", "")
        if state == "queued":
            words = f"queued, position {status.get('position', '?')}"
        else:
            words = str(status.get("stage") or state)[:80]
        percent = round(100 * min(max(number(status.get("progress")), 0.0), 1.0))
        if self.bar is not None:
            self.bar.set_description(words)
            self.bar.update(percent - self.bar.n)
        elif (words, percent) != self.last:
            print(f"job {self.job_id}: {words} {percent}%", file=sys.stderr, flush=True)
        self.last = (words, percent)


if __name__ == "__main__":
    sys.exit(main())
