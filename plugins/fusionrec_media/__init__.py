"""Content encoders for item media: ``text`` (a Hugging Face checkpoint), ``image`` (a torchvision
classifier without its classifier), ``audio_cnn`` (log-mel spectrogram + a small CNN) and
``audio_pretrained`` (a torchaudio wav2vec2-style bundle).

Each is a :class:`fusionrec_media.base.MediaEncoder` (a core ``ContentEncoder``): ``prepare(contents)``
runs the shared preparation of :mod:`fusionrec.serving.content` (the CPU work) for U
distinct items in DataLoader workers, ``encode`` maps the prepared tensors to backbone features
``[U, width]`` and ``forward`` projects them to ``[U, dim]``. Every one takes ``mode`` (``frozen`` or
``finetune``), ``finetune_top``, ``learning_rate`` and ``strict``; see ``freezing.py`` for what trains.
"""
