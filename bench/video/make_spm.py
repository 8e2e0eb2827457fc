"""Train a tiny SentencePiece unigram model with umt5's special ids (pad 0, eos 1, unk 2, no bos).

usage: python3 bench/video/make_spm.py OUT.model
ComfyUI's UMT5 tokenizer (comfy/text_encoders/spiece_tokenizer.py) loads the `spiece_model` tensor of the text
encoder file as a SentencePiece model proto; any valid model works for a timing benchmark (ids stay < 256384).
"""
import io
import random
import sys

import sentencepiece as spm

random.seed(0)
WORDS = ("a cinematic shot of the red fox running through snow at sunset with golden light and soft shadows "
         "camera slowly pans across mountains river forest city night rain neon reflections ocean waves beach "
         "low quality blurry static overexposed worst quality jpeg artifacts ugly deformed extra fingers "
         "video of a cat dog bird flying over fields flowers wind clouds sky bright colorful detailed")
words = WORDS.split()
lines = [" ".join(random.choice(words) for _ in range(random.randint(5, 30))) for _ in range(5000)]
buf = io.BytesIO()
spm.SentencePieceTrainer.train(sentence_iterator=iter(lines), model_writer=buf, vocab_size=400, model_type="unigram",
                               pad_id=0, eos_id=1, unk_id=2, bos_id=-1, character_coverage=1.0,
                               hard_vocab_limit=False, minloglevel=2)
with open(sys.argv[1], "wb") as out:
    out.write(buf.getvalue())
sp = spm.SentencePieceProcessor(model_proto=buf.getvalue(), add_eos=True)
print("spm bytes", len(buf.getvalue()), "pieces", sp.get_piece_size(), "encode('')", sp.encode(""),
      "encode('a red fox')", sp.encode("a red fox"))
