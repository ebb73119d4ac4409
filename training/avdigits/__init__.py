"""AV-digits: a deterministic audio-visual corpus of handwritten digits that are also spoken.

Each clip is a real MP4 (h264 + AAC) showing an MNIST digit while a human recording or an
eSpeak NG voice says it. Splits are disjoint by speaker and by image. Entry point:
`avindex.training.avdigits.build.build_corpus`; the command line is `avindex data avdigits`.

Modules: sources (MNIST, human recordings), espeak (ctypes wrapper), splits (who/what goes
where), render (frames), audio (sound track), mux (MP4), clip (one clip), build (the corpus),
sheet (contact sheet), cli (options).
"""
