"""The data layer: what a record is, the one pixel rule, the manifest, conversion and reading.

    xray.data.schema        record schema, class names, splits, shard naming
    xray.data.formats       file bytes -> bytes TensorFlow decodes (DICOM, TIFF -> PNG); header sizes. No TensorFlow.
    xray.data.pixels        the one preprocessing (size bound, depth rule, resize, model scaling), in TensorFlow
    xray.data.manifest      the typed Manifest of a shards folder (counts, options, class weights, shard list)
    xray.data.convert       image folders -> sharded TFRecords + manifest.json (xray shards)
    xray.data.reader        tf.data from a manifest's shards; dataset() chooses records or a feature cache
    xray.data.lock          one writer per folder (xray shards --out, a training workdir)

Imports point one way: trainer, tuner and serving import data; data imports none of them. Clients import
xray.data.schema and xray.data.formats only (neither loads TensorFlow).
"""
