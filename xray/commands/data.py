"""`xray synth`, `xray shards`, `xray upload`: data in."""

from __future__ import annotations

import json
import sys
import time

from xray.commands import UserError, user_error


def _add_synth(sub):
    p = sub.add_parser("synth", help="write a synthetic chest X-ray-like data set (Kaggle layout)",
                       description="Writes OUT/{train,test}/{NORMAL,PNEUMONIA}/*.jpeg: drawn chest films "
                       "where pneumonia adds opacities. Not medical data; deterministic for a seed.")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--num-patients", type=int, default=300, help="patients (1-3 images each, ~3:1 pneumonia:normal)")
    p.add_argument("--seed", type=int, default=0, help="random seed (same seed, same bytes)")
    p.add_argument("--image-size", type=int, default=256, help="image width in pixels (height varies +-15%%)")
    p.add_argument("--difficulty", type=float, default=None,
                   help="0 (easy caricature) to 1 (default 0.5: calibrated for a demo test AUC in 0.85-0.97): "
                        "0.3 x difficulty of the pneumonia films show nothing (occult); above 0.5 also fainter and "
                        "fewer opacities, benign densities, exposure, noise, positioning, side markers and text")
    p.set_defaults(run=_run_synth)


def _run_synth(args):
    from tqdm import tqdm

    from xray.trainer import synth

    started = time.monotonic()
    with tqdm(desc="synth", unit="img", dynamic_ncols=True) as bar:
        summary = synth.synthesize(args.out, args.num_patients, args.seed, args.image_size, progress=bar.update,
                                   difficulty=synth.DEFAULT_DIFFICULTY if args.difficulty is None else args.difficulty)
    for split, per_class in summary.counts.items():
        patients = summary.patients[split]
        print(f"{split:5s}: " + ", ".join(f"{n} {c} images ({patients[c]} patients)" for c, n in per_class.items()))
    print(f"wrote {summary.num_images} images to {args.out} in {time.monotonic() - started:.1f}s")


def _add_shards(sub):
    from xray.data.split import DEFAULT_PATIENT_PATTERN

    p = sub.add_parser("shards", help="convert image folders to sharded TFRecords + manifest.json",
                       description="Reads SRC/{train,test[,val]}/{NORMAL,PNEUMONIA}/ (Kaggle chest_xray layout), "
                       "skips bad files (listed in the manifest), carves a patient-disjoint, class-stratified "
                       "validation split from train, and writes train/val/test shards atomically.")
    p.add_argument("--src", required=True, help="image folder in the Kaggle chest_xray layout: a local path, or a URI "
                   "TensorFlow reads (gs://bucket/chest_xray with the pod's or your Google credentials)")
    p.add_argument("--out", required=True, help="output directory or gs:// URI")
    p.add_argument("--num-shards", type=int, default=8, help="shards per split (>= the number of training workers)")
    p.add_argument("--val-fraction", type=float, default=0.1, help="fraction of train images (by patient) for validation")
    p.add_argument("--seed", type=int, default=0, help="seed of the split and shard order")
    p.add_argument("--image-size", type=int, default=None,
                   help="re-encode each image as a PX x PX grayscale JPEG (default: keep the original bytes)")
    p.add_argument("--patient-pattern", default=DEFAULT_PATIENT_PATTERN,
                   help="regex whose first group is the patient id in a file name (default: Kaggle's names)")
    p.add_argument("--workers", type=int, default=0,
                   help="threads decoding, resizing and re-encoding images (default 0: one per CPU of this process's cgroup limit)")
    p.add_argument("--json", action="store_true", help="print the manifest as JSON on stdout")
    p.set_defaults(run=_run_shards)


def _run_shards(args):
    from xray.data import convert
    from xray.data.lock import LockedError
    from xray.data.schema import SPLITS

    try:
        options = convert.ShardOptions(args.num_shards, args.val_fraction, args.seed, args.image_size, args.patient_pattern,
                                       args.workers)
        manifest = convert.convert(args.src, args.out, options, show_progress=True)
    except (convert.SourceLayoutError, ValueError, LockedError) as error:
        raise user_error(error) from None
    if args.json:
        print(manifest.to_json())
        return
    for split in SPLITS:
        counts = manifest.counts[split]
        print(f"{split:5s}: {sum(counts.values()):6d} images ({', '.join(f'{n} {c}' for c, n in counts.items())}), "
              f"{manifest.num_patients[split]} patients, {len(manifest.shards[split])} shard(s)")
    print("inputs: " + ", ".join(f"{n} {kind}" for kind, n in manifest.inputs.items()))
    if manifest.renamed:
        print(f"{len(manifest.renamed)} file name(s) were not valid UTF-8 and are recorded with \\xNN escapes "
              f"(e.g. {manifest.renamed[0]['path']}); see manifest.json")
    if manifest.skipped:
        print(f"skipped {manifest.num_skipped} file(s):")
        for item in manifest.skipped[:20]:
            print(f"  {item['path']}: {item['reason']}")
        if manifest.num_skipped > 20:
            print(f"  ... and {manifest.num_skipped - 20} more (see manifest.json)")
    if manifest.test_patients_also_in_train:
        print(f"warning: {len(manifest.test_patients_also_in_train)} patient id(s) of test/ also appear in train/ "
              "(from the source folders); see manifest.json")
    print(f"{manifest.num_images_found} files in {manifest.seconds:.1f}s "
          f"({manifest.images_per_second} images/s, {manifest.source_megabytes} MB read); "
          f"manifest: {args.out.rstrip('/')}/manifest.json")


def _add_upload(sub):
    p = sub.add_parser("upload", help="copy an image folder (or .zip/.tar) onto the cluster volume via the uploader pod",
                       description="Makes DEST match SRC's train/, val/ and test/ (Kaggle chest_xray layout; a .zip or .tar "
                       "of it works too), through a receiver in POD (kubectl exec), file by file like rsync: only files "
                       "whose size or sha256 differ are sent, files and splits gone from SRC are removed. The receiver "
                       "checks every file against the sender's list before a split is swapped in; an interrupted or bad "
                       "stream leaves the volume's copy as it was. Member names are checked first (no absolute paths, "
                       "'..', links or devices). make data-cluster starts the pod, runs this, then shards DEST on the "
                       "cluster.",
                       epilog="exit 0: DEST matches SRC; 1: a split could not be sent or verified (the volume keeps its "
                       "previous copy; re-run); 2: SRC is refused (layout, a member name), nothing sent. Details: "
                       "docs/reference.md, 'Upload'.")
    p.add_argument("src", help="local folder, .zip or .tar")
    p.add_argument("--dest", required=True, help="folder on the volume as the pod sees it, e.g. /mnt/xray/incoming/chest_xray")
    p.add_argument("-n", "--namespace", default="xray")
    p.add_argument("--pod", default="xray-upload")
    p.add_argument("--local", action="store_true", help="DEST is a folder on this machine (no pod): same layout")
    p.set_defaults(run=_run_upload)


def _run_upload(args):
    from xray.data import upload

    transport = upload.local_exec() if args.local else upload.kubectl_exec(args.namespace, args.pod)
    try:
        report = upload.upload(args.src, args.dest, transport)
    except upload.UploadError as error:
        if error.code == 2:
            raise user_error(error) from None
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(json.dumps(report))


def register(sub) -> None:
    for add in (_add_synth, _add_shards, _add_upload,):
        add(sub)
