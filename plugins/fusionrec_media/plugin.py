from fusionrec import hookimpl
from fusionrec_media.audio import CnnAudioEncoder, PretrainedAudioEncoder
from fusionrec_media.image import ImageEncoder
from fusionrec_media.text import TextEncoder


@hookimpl
def fusionrec_register_encoders():
    return {"text": TextEncoder, "image": ImageEncoder,
            "audio_cnn": CnnAudioEncoder, "audio_pretrained": PretrainedAudioEncoder}
