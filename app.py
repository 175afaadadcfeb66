"""ARPG Studio: build the Gradio app and serve it (the Hugging Face Spaces entry point).

The start-up model is the embedded emoji model in assets/, or ARPG_MODEL / ARPG_TOKENIZER.
"""

from app.ui import QUEUE_SIZE, concurrency_limit, create_demo, launch_options

if __name__ == "__main__":
    demo = create_demo()
    demo.queue(max_size=QUEUE_SIZE, default_concurrency_limit=concurrency_limit())
    demo.launch(**launch_options())
