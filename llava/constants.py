"""Token ids and strings shared by the model, the prompt builders and the eval scripts (as in LLaVA)."""

IGNORE_INDEX = -100
# Placeholder id spliced into input_ids where the visual tokens go; never a real vocabulary id.
IMAGE_TOKEN_INDEX = -200
DEFAULT_IMAGE_TOKEN = "<image>"
DEFAULT_IMAGE_PATCH_TOKEN = "<im_patch>"
DEFAULT_IM_START_TOKEN = "<im_start>"
DEFAULT_IM_END_TOKEN = "<im_end>"
IMAGE_PLACEHOLDER = "<image-placeholder>"

# OpenAI CLIP's pixel normalisation, which LanguageBind's towers and Video-LLaVA's frame preprocessing share.
OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
