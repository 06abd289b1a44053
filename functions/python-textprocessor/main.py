OPERATIONS = {
    "word_count": lambda text: len(text.split()),
    "char_count": len,
    "upper": str.upper,
    "lower": str.lower,
}


def handle(params):
    text = params.get("text")
    if not isinstance(text, str):
        raise TypeError("text must be a string")
    operation = params.get("operation", "word_count")
    if operation not in OPERATIONS:
        raise ValueError(
            f"unknown operation {operation!r}: expected one of {', '.join(OPERATIONS)}"
        )
    return {"operation": operation, "result": OPERATIONS[operation](text)}
