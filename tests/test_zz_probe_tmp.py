import json, shutil, traceback
import numpy as np

def show(fn):
    try:
        r = fn()
        print("OK", repr(r)[:200])
    except BaseException as e:
        print(type(e).__name__, "|", str(e)[:600])

def test_probe(built_folder, model, photos, edge_images, vlm_processor, llm_tokenizer, tmp_path):
    S = dict(max_new_tokens=4, description_max_new_tokens=4, do_sample=False)
    g = model.generate
    show(lambda: g(images=photos["astronaut"], text_prompt="q", vlm_processor=llm_tokenizer, **S))
    show(lambda: g(text_prompt="q", llm_tokenizer=vlm_processor.tokenizer, **S))
    show(lambda: g(text_prompt="q", llm_tokenizer=vlm_processor, **S))
    show(lambda: g(images=photos["astronaut"], text_prompt="q", vlm_processor=vlm_processor.image_processor, **S))
    for k in ["empty", "not_an_image", "truncated", "bomb"]:
        show(lambda: g(images=edge_images[k], text_prompt="q", **S))
    show(lambda: g(images=np.zeros((0, 10, 3), np.uint8), text_prompt="q", **S))
    show(lambda: g(images="ftp://127.0.0.1/x.png", text_prompt="q", **S))
    show(lambda: g(images=5, text_prompt="q", **S))
    show(lambda: g(images=[photos["astronaut"]]*3, text_prompt=["a","b"], **S))
    show(lambda: g(text_prompt="q", max_length=10, **S))
    show(lambda: model.chat([{"role":"user","content":[{"type":"text","text":5}]}], **S))
    show(lambda: model.chat([{"role":"user","content":[{"type":"image_url","image_url":{}}, {"type":"text","text":"q"}]}], **S))
    show(lambda: model.chat([], **S))
    # mismatch
    from modeling_unified import UnifiedMultimodalModel
    f = tmp_path / "f"
    shutil.copytree(built_folder, f)
    top = json.loads((f/"config.json").read_text())
    top["vlm_config"]["text_config"]["intermediate_size"] *= 2
    (f/"config.json").write_text(json.dumps(top))
    c = json.loads((f/"vlm"/"config.json").read_text())
    c["text_config"]["intermediate_size"] *= 2
    (f/"vlm"/"config.json").write_text(json.dumps(c))
    show(lambda: UnifiedMultimodalModel.from_pretrained(f))
    print(json.loads((built_folder/"config.json").read_text())["llm_config"].get("quantization_config"))
