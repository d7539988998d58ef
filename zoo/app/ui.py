"""The Gradio page of ``zoo app``: layout and event wiring only; everything it shows and does comes from
:class:`zoo.app.workspace.Workspace` (one per browser session)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import gradio as gr

from zoo.app.views import VIEWS, WINDOWS
from zoo.app.workspace import (
    ACCEPTED_SUFFIXES,
    MODES,
    USER_ERRORS,
    ModelCache,
    Outcome,
    Workspace,
)

TITLE = "promptable-medseg-zoo: click to segment"
HELP = (
    "Open a NIfTI volume or a 2D image (upload, a path on this computer, or a bundled example). Click on any view: "
    "a **positive** or **negative** click, or a **box** by two clicks at opposite corners. Models trained with "
    "boxes (LiteMedSAM, SAM-UNet) want a box first; clicks then refine it. Each prompt runs through one "
    "interactive session (the image is encoded once); the mask is overlaid on every view."
)


def examples() -> dict[str, Path]:
    """The bundled examples, one click away."""
    from zoo.resources import data_path

    return {
        "Example CT (TotalSegmentator, NIfTI)": data_path("totalseg_example", "ct.nii.gz"),
        "Example 2D slice (AMOS, PNG)": data_path("sam_med2d_demo", "images", "amos_0004_75.png"),
    }


def build_app(models: ModelCache, model_name: str, temp_dir: Path, max_file_mb: float,
              model_choices: list[str] | None = None) -> Any:
    """The Blocks of the app (not launched)."""
    choices = list(dict.fromkeys([model_name, *(model_choices or models.registry_names())]))
    bundled = examples()

    def workspace(state: Workspace | None) -> Workspace:
        return state if state is not None else Workspace(models, model_name, temp_dir, max_file_mb)

    def refresh(ws: Workspace) -> list[Any]:
        """Every output that may change: state, status, weights notice, the three views and their sliders."""
        image = ws.image
        volume = image is not None and image.kind == "volume"
        pictures, sliders = [], []
        for number, view in enumerate(VIEWS):
            shown = image is not None and (volume or number == 0)
            label = view if volume or image is None else f"image ({image.name})"
            key = view if volume else "image"
            pictures.append(gr.update(value=ws.render(key) if shown else None, visible=shown or image is None,
                                      label=label))
            if volume:
                count = image.geometry.slice_count(view)
                sliders.append(gr.update(maximum=count - 1, value=ws.slices[view], visible=True,
                                         label=f"{view} slice (0-{count - 1})"))
            else:
                sliders.append(gr.update(visible=False))
        window = gr.update(value=ws.window, visible=volume)
        return [ws, ws.status(), ws.model.notice, *pictures, *sliders, window]

    def views_only(ws: Workspace) -> list[Any]:
        image = ws.image
        volume = image is not None and image.kind == "volume"
        pictures = []
        for number, view in enumerate(VIEWS):
            shown = image is not None and (volume or number == 0)
            pictures.append(ws.render(view if volume else "image") if shown else None)
        return [ws, ws.status(), *pictures]

    def guarded(ws: Workspace, action: Any) -> None:
        try:
            action()
        except USER_ERRORS as err:
            ws.last = Outcome(str(err), error=True)

    with gr.Blocks(title=TITLE, analytics_enabled=False) as app:
        state = gr.State(None)
        gr.Markdown(f"## {TITLE}\n{HELP}")
        with gr.Row():
            model = gr.Dropdown(choices, value=model_name, label="model", elem_id="zoo-model", scale=1)
            weights = gr.Markdown(models.get(model_name).notice, elem_id="zoo-weights")
        with gr.Row():
            upload = gr.File(label=f"upload ({', '.join(ACCEPTED_SUFFIXES)}; at most {max_file_mb:g} MB)",
                             file_types=[".nii", ".gz", ".png", ".jpg", ".jpeg"], type="filepath",
                             elem_id="zoo-upload", scale=2)
            with gr.Column(scale=2):
                path = gr.Textbox(label="or a path on this computer", elem_id="zoo-path")
                open_path = gr.Button("Open path", elem_id="zoo-open-path")
            with gr.Column(scale=2):
                example_buttons = [gr.Button(label, elem_id=f"zoo-example-{n}") for n, label in enumerate(bundled)]
        with gr.Row():
            mode = gr.Radio(list(MODES), value=MODES[0], label="prompt", elem_id="zoo-mode", scale=2)
            window = gr.Dropdown(list(WINDOWS), value=None, label="CT window", elem_id="zoo-window", visible=False,
                                 scale=1)
            undo = gr.Button("Undo", elem_id="zoo-undo", scale=0)
            reset = gr.Button("Reset", elem_id="zoo-reset", scale=0)
            export = gr.Button("Export mask (NIfTI / PNG)", elem_id="zoo-export", variant="primary", scale=0)
        status = gr.Markdown("Open an image or a volume.", elem_id="zoo-status")
        pictures, sliders = [], []
        with gr.Row():
            for view in VIEWS:
                with gr.Column():
                    pictures.append(gr.Image(label=view, type="numpy", format="png", interactive=False,
                                             elem_id=f"zoo-view-{view}", buttons=[]))
                    sliders.append(gr.Slider(0, 1, value=0, step=1, label=f"{view} slice", visible=False,
                                             elem_id=f"zoo-slice-{view}"))
        download = gr.File(label="download", interactive=False, elem_id="zoo-download")

        everything = [state, status, weights, *pictures, *sliders, window]
        views = [state, status, *pictures]

        def open_file(state: Workspace | None, file: str | None, name: str | None = None) -> list[Any]:
            ws = workspace(state)
            if file:
                guarded(ws, lambda: ws.open(file, name))
            return refresh(ws)

        def open_upload(state: Workspace | None, file: str | None) -> list[Any]:
            return open_file(state, file, Path(file).name if file else None)

        upload.upload(open_upload, [state, upload], everything)
        open_path.click(open_file, [state, path], everything)
        path.submit(open_file, [state, path], everything)
        for button, file in zip(example_buttons, bundled.values()):
            button.click(lambda state, file=file: open_file(state, str(file)), [state], everything)

        def choose_model(state: Workspace | None, name: str) -> list[Any]:
            ws = workspace(state)
            guarded(ws, lambda: ws.set_model(name))
            return refresh(ws)

        model.change(choose_model, [state, model], everything)

        # The prompt mode has no event of its own: each click on a view brings it along (see on_select).

        def choose_window(state: Workspace | None, value: str | None) -> list[Any]:
            ws = workspace(state)
            if value:
                guarded(ws, lambda: ws.set_window(value))
            return views_only(ws)

        window.input(choose_window, [state, window], views)

        for view, picture, slider in zip(VIEWS, pictures, sliders):

            def on_select(state: Workspace | None, chosen: str, index: float, event: gr.SelectData,
                          view: str = view) -> list[Any]:
                # The mode and the slice come with the click: the click does not depend on the order in which
                # the radio's and the slider's own events were served.
                ws = workspace(state)
                if ws.image is not None:
                    guarded(ws, lambda: ws.set_mode(chosen))
                    if ws.image.kind == "volume":
                        ws.set_slice(view, int(index))
                    x, y = event.index[0], event.index[1]
                    ws.click(view if ws.image.kind == "volume" else "image", float(x), float(y))
                return views_only(ws)

            picture.select(on_select, [state, mode, slider], views)

            def on_slice(state: Workspace | None, value: float, view: str = view) -> list[Any]:
                ws = workspace(state)
                ws.set_slice(view, int(value))
                return views_only(ws)

            slider.release(on_slice, [state, slider], views)
            slider.input(on_slice, [state, slider], views)

        def on_undo(state: Workspace | None) -> list[Any]:
            ws = workspace(state)
            ws.undo()
            return views_only(ws)

        def on_reset(state: Workspace | None) -> list[Any]:
            ws = workspace(state)
            ws.reset()
            return views_only(ws)

        undo.click(on_undo, [state], views)
        reset.click(on_reset, [state], views)

        def on_export(state: Workspace | None) -> list[Any]:
            ws = workspace(state)
            written: Path | None = None
            try:
                written = ws.export()
            except USER_ERRORS as err:
                ws.last = Outcome(str(err), error=True)
            return [ws, ws.status(), None if written is None else str(written)]

        export.click(on_export, [state], [state, status, download])
    return app


def launch(app: Any, host: str, port: int | None, temp_dir: Path, max_file_mb: float, block: bool = True) -> Any:
    """Serve ``app`` on ``host:port`` (no share link, no analytics, no server-side rendering, system fonts)."""
    theme = gr.themes.Default(font=["ui-sans-serif", "system-ui", "sans-serif"],
                              font_mono=["ui-monospace", "monospace"])
    return app.queue(default_concurrency_limit=1).launch(
        server_name=host, server_port=port, share=False, inbrowser=False, show_error=True, quiet=False,
        allowed_paths=[str(temp_dir)], max_file_size=f"{max_file_mb:g}mb", ssr_mode=False, theme=theme,
        prevent_thread_lock=not block, footer_links=[],
    )


__all__ = ["TITLE", "build_app", "examples", "launch"]
