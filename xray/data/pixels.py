"""The one preprocessing of the project: encoded image bytes -> model input. ``xray shards`` (when it stores
images at a size), the training reader and the exported serving signature all call these functions, so that
training and serving see the same pixels.

1. Size bound, from the header only: JPEG (its SOF marker), PNG (IHDR), GIF (screen), BMP (info header). More
   than ``xray.data.formats.MAX_PIXELS`` fails with INVALID_ARGUMENT naming the size, before anything is decoded.
2. Depth rule, to one channel on a 0..255 scale (float32):
   - 8-bit JPEG/PNG/BMP/GIF: the stored values; colour becomes luma (ITU-R 601: decoders' own conversion).
   - 16-bit PNG (a 12-16 bit film, or a DICOM converted by xray.data.formats): min..max of the image -> 0..255,
     in float, so a 12-bit film in a 16-bit PNG is not divided by 257 into near-black (a flat image is 0).
3. Resize to the model's square size: a JPEG is decoded at the largest DCT scale (1/2, 1/4, 1/8: libjpeg's
   scaled IDCT) that keeps both sides >= the size, then an antialiased bilinear resize (averages each output
   pixel's footprint). A full-size film sent to the server and the same film pre-resized into shards reach the
   model with the same detail.
4. Model scaling: gray repeated to 3 channels, x / 127.5 - 1 (keras resnet_v2.preprocess_input).
"""

from __future__ import annotations

from xray.data.formats import MAX_PIXELS

RESIZE_METHOD = "tf-jpeg-dct-scale+bilinear-antialias"
DEPTH_RULE = "8-bit as stored; 16-bit PNG min-max to 0..255"
JPEG_SCALES = (1, 2, 4, 8)
_HEADER_BYTES = 32
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _header_size(image_bytes):
    """(height, width) as int64 scalars from the header of a PNG, GIF or BMP (a JPEG's comes from
    tf.image.extract_jpeg_shape in its own branch); (0, 0) for anything else (whose decode then fails with
    TensorFlow's own "unknown image format")."""
    import tensorflow as tf

    head = tf.strings.substr(image_bytes, 0, _HEADER_BYTES)  # shorter when the file is
    head = tf.strings.substr(tf.strings.join([head, tf.constant(b"\0" * _HEADER_BYTES)]), 0, _HEADER_BYTES)
    b = tf.cast(tf.io.decode_raw(head, tf.uint8), tf.int64)

    def be32(i):
        return b[i] * 16777216 + b[i + 1] * 65536 + b[i + 2] * 256 + b[i + 3]

    def le(i, n):
        return tf.add_n([b[i + k] * (256 ** k) for k in range(n)])

    def png():
        return tf.stack([be32(20), be32(16)])

    def gif():
        return tf.stack([le(8, 2), le(6, 2)])

    def bmp():
        height = le(22, 4)
        height = tf.where(height >= 2**31, 2**32 - height, height)  # negative: a top-down bitmap
        return tf.stack([height, le(18, 4)])

    def unknown():
        return tf.zeros([2], tf.int64)

    starts = lambda prefix: tf.equal(tf.strings.substr(head, 0, len(prefix)), prefix)  # noqa: E731
    index = tf.where(starts(PNG_SIGNATURE), 0, tf.where(starts(b"GIF8"), 1, tf.where(starts(b"BM"), 2, 3)))
    size = tf.switch_case(tf.cast(index, tf.int32), [png, gif, bmp, unknown])
    return size[0], size[1]


def _is_16_bit_png(image_bytes):
    """For bytes that start with the PNG signature: whether IHDR's bit depth (byte 24) is 16."""
    import tensorflow as tf

    return tf.equal(tf.strings.substr(tf.strings.substr(image_bytes, 0, 25), 24, 1), b"\x10")


def _bounded(image_bytes, height, width):
    """``image_bytes`` behind a check that fails with INVALID_ARGUMENT when height x width is above MAX_PIXELS:
    a decode that reads the result runs only after the check passed."""
    import tensorflow as tf

    height, width = tf.cast(height, tf.int64), tf.cast(width, tf.int64)
    message = tf.strings.format("image is {}x{} pixels; at most {} megapixels are decoded: downscale it before "
                                "sending", (width, height, MAX_PIXELS // 1_000_000))
    with tf.control_dependencies([tf.debugging.Assert(height * width <= MAX_PIXELS, [message])]):
        return tf.identity(image_bytes)


def decode_gray(image_bytes, image_size: int):
    """Encoded JPEG/PNG/BMP/GIF (scalar string tensor) -> float32 [height, width, 1] on a 0..255 scale, by the
    size bound and depth rule above. JPEGs come out DCT-scaled, at least image_size on both sides when the
    source is."""
    import tensorflow as tf

    def jpeg():
        shape = tf.image.extract_jpeg_shape(image_bytes)
        checked = _bounded(image_bytes, shape[0], shape[1])
        smaller = tf.minimum(shape[0], shape[1])
        index = tf.add_n([tf.cast(smaller // scale >= image_size, tf.int32) for scale in JPEG_SCALES[1:]])
        branches = [lambda scale=scale: tf.io.decode_jpeg(checked, channels=1, ratio=scale) for scale in JPEG_SCALES]
        return tf.cast(tf.switch_case(index, branches), tf.float32)

    def not_jpeg():
        checked = _bounded(image_bytes, *_header_size(image_bytes))

        def png16():
            image = tf.cast(tf.io.decode_png(checked, channels=1, dtype=tf.uint16), tf.float32)
            low, high = tf.reduce_min(image), tf.reduce_max(image)
            return tf.math.divide_no_nan(image - low, high - low) * 255.0

        def png8():
            return tf.cast(tf.io.decode_png(checked, channels=1), tf.float32)

        def rgb_only():  # TensorFlow decodes BMP and GIF to RGB only (a GIF's first frame): their luma
            image = tf.io.decode_image(checked, channels=3, dtype=tf.uint8, expand_animations=False)
            return tf.image.rgb_to_grayscale(tf.cast(image, tf.float32))

        is_png = tf.equal(tf.strings.substr(image_bytes, 0, len(PNG_SIGNATURE)), PNG_SIGNATURE)
        return tf.cond(is_png, lambda: tf.cond(_is_16_bit_png(image_bytes), png16, png8), rgb_only)

    image = tf.cond(tf.io.is_jpeg(image_bytes), jpeg, not_jpeg)
    image.set_shape([None, None, 1])
    return image


def resize_gray(image, image_size: int):
    """[height, width, 1] grayscale (any dtype) -> float32 [image_size, image_size, 1], values kept in 0..255."""
    import tensorflow as tf

    return tf.image.resize(image, [image_size, image_size], method="bilinear", antialias=True)


def preprocess_image(image_bytes, image_size: int):
    """One encoded image (scalar string tensor) -> float32 [image_size, image_size, 3] in [-1, 1]: steps 1-4
    of this module. Works eagerly, in tf.data and in the exported signature."""
    import tensorflow as tf

    image = resize_gray(decode_gray(image_bytes, image_size), image_size)
    image = tf.image.grayscale_to_rgb(image)
    image = image / 127.5 - 1.0
    image.set_shape([image_size, image_size, 3])
    return image


_DECODERS: dict = {}


def decode_and_resize(data: bytes, image_size: int):
    """Eager helper for xray shards: bytes -> float32 numpy [image_size, image_size, 1] on 0..255 (steps 1-3)."""
    import tensorflow as tf

    if image_size not in _DECODERS:
        _DECODERS[image_size] = tf.function(lambda b: resize_gray(decode_gray(b, image_size), image_size),
                                            input_signature=[tf.TensorSpec([], tf.string)])
    return _DECODERS[image_size](tf.constant(data)).numpy()
