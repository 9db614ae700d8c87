"""The synthvis_qa task's functions for lmms-eval (copied next to the task's YAML as utils.py by `lmms-task`)."""


def doc_to_visual(doc):
    return [doc["image"].convert("RGB")]


def doc_to_text(doc, lmms_eval_specific_kwargs=None):
    kwargs = lmms_eval_specific_kwargs or {}
    return f"{kwargs.get('pre_prompt', '')}{doc['question']}{kwargs.get('post_prompt', '')}"


def process_results(doc, results):
    """Exact match of the answer's words (lower case, punctuation dropped) with the reference answer."""
    words = "".join(c if c.isalnum() or c.isspace() else " " for c in results[0].lower()).split()
    return {"exact_match": float(words[: len(doc["answer"].split())] == doc["answer"].split())}
