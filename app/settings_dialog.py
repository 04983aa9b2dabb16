"""The settings panel: every field of tldr_core.settings.Settings, with audio devices from sounddevice."""

from __future__ import annotations

from PySide6.QtCore import Qt
from PySide6.QtWidgets import (QCheckBox, QComboBox, QDialog, QDialogButtonBox, QDoubleSpinBox, QFormLayout,
                               QHBoxLayout, QSpinBox, QWidget)

from app.audio_io import device_names
from tldr_core.settings import (DECODING_MODES, DEVICES, MAX_SEED, PATCH_MODES, PATCH_SIZES, SPECULATIVE_MODES,
                                TEMPERATURE_RANGE, VOICE_MATCHES, VOICE_TUNINGS, Settings)

PATCH_LABELS = {2: "2 tokens per step", 4: "4 tokens per step (default)", 6: "6 tokens per step",
                8: "8 tokens per step"}
VOICE_MATCH_LABELS = {32: "Light (default)", 16: "Strong", 0: "Off"}
VOICE_TUNING_LABELS = {0: "Off (default)", 100: "Quick", 300: "Close"}
MODE_LABELS = {"tldr": "TLDR patches", "baseline": "Token by token (baseline)", "ssd": "Speculative (SSD)",
               "tldr-ssd": "TLDR patches + speculation"}
NO_DRAFT_TIP = ("This model has no draft model, so speculative decoding is unavailable: train one with "
                "`tldr-voice train draft` and pack it in with `tldr-voice model pack --draft`.")
DEVICE_LABELS = {"auto": "Automatic (GPU when available)", "cuda": "GPU (CUDA)", "cpu": "CPU"}
SYSTEM_DEFAULT = "System default"


def _combo(items: dict, current) -> QComboBox:
    """A combo box over items (value -> label) with `current` selected."""
    combo = QComboBox()
    for value, label in items.items():
        combo.addItem(label, value)
    combo.setCurrentIndex(max(0, combo.findData(current)))
    return combo


def _device_combo(kind: str, current: str | None) -> QComboBox:
    """The devices present now, plus the saved one if it is unplugged (so saving does not lose it)."""
    items: dict[str | None, str] = {None: SYSTEM_DEFAULT, **{name: name for name in device_names(kind)}}
    if current is not None and current not in items:
        items[current] = f"{current} (not connected)"
    return _combo(items, current)


def _grey_out_missing(combo: QComboBox, available: list[int]) -> None:
    """Disable the patch sizes the loaded model has no adapter for, and say so in their labels."""
    model = combo.model()
    for row in range(combo.count()):
        size = combo.itemData(row)
        if size not in available:
            combo.setItemText(row, f"{combo.itemText(row)}: not in this model")
            model.item(row).setEnabled(False)


def _grey_out_ssd(combo: QComboBox) -> None:
    """Disable speculative decoding for a model without a draft, and say why in its labels and tooltips."""
    for mode in SPECULATIVE_MODES:
        row = combo.findData(mode)
        combo.setItemText(row, f"{combo.itemText(row)}: no draft in this model")
        combo.model().item(row).setEnabled(False)
        combo.setItemData(row, NO_DRAFT_TIP, Qt.ItemDataRole.ToolTipRole)


class SettingsDialog(QDialog):
    def __init__(self, settings: Settings, parent: QWidget | None = None, patch_sizes: list[int] | None = None,
                 has_draft: bool | None = None):
        """`patch_sizes`: those the loaded model has (the others are greyed out); `has_draft`: whether it can decode
        speculatively (if not, SSD is greyed out); both None when no model is loaded."""
        super().__init__(parent)
        self.setWindowTitle("Settings")
        self._base = settings
        self.decoding_mode = _combo({m: MODE_LABELS[m] for m in DECODING_MODES}, settings.decoding_mode)
        self.decoding_mode.setToolTip("TLDR writes a patch of speech tokens per model step; token by token is the "
                                      "slower reference it is measured against; speculative (SSD) lets a small "
                                      "draft model propose tokens that the model checks several at a time, with "
                                      "the same speech as token by token; TLDR patches + speculation lets it "
                                      "propose whole patches, checked two at a time.")
        if has_draft is False:
            _grey_out_ssd(self.decoding_mode)
        self.patch_size = _combo({p: PATCH_LABELS[p] for p in PATCH_SIZES}, settings.patch_size)
        self.patch_size.setToolTip("Speech tokens the model writes per TLDR step: larger patches speak sooner and "
                                   "faster.")
        if patch_sizes is not None:
            _grey_out_missing(self.patch_size, patch_sizes)
        self.decoding_mode.currentIndexChanged.connect(self._patch_size_applies)
        self._patch_size_applies()
        self.device = _combo({d: DEVICE_LABELS[d] for d in DEVICES}, settings.device)
        self.device.setToolTip("Where the speech model runs. Automatic picks the GPU when one is usable.")
        self.input_device = _device_combo("input", settings.input_device)
        self.output_device = _device_combo("output", settings.output_device)
        self.temperature = QDoubleSpinBox()
        self.temperature.setRange(*TEMPERATURE_RANGE)
        self.temperature.setSingleStep(0.05)
        self.temperature.setValue(settings.temperature)
        self.temperature.setToolTip("Lower: steadier, flatter speech. Higher: livelier, less predictable.")
        self.voice_match = _combo({v: VOICE_MATCH_LABELS[v] for v in VOICE_MATCHES}, settings.voice_match)
        self.voice_match.setToolTip("How closely the speech follows the voice sample's own sound. Light: like the "
                                    "voice, with the clearest words; Strong: a little more like the voice, a few more "
                                    "words unclear; Off: a voice only partly the sample's.")
        self.voice_tuning = _combo({v: VOICE_TUNING_LABELS[v] for v in VOICE_TUNINGS}, settings.voice_tuning)
        self.voice_tuning.setToolTip("Whether the speech codec first learns each voice sample (once per voice). Quick "
                                     "(about 10 s on a CPU): more like the voice; Close (about 30 s): more so, and "
                                     "with Voice match Off the closest to the voice, a few more words unclear; "
                                     "Off: no wait.")
        self.fixed_seed = QCheckBox("Fixed")
        self.fixed_seed.setToolTip("With a fixed seed the same text and voice give the same speech every time.")
        self.seed = QSpinBox()
        self.seed.setRange(0, MAX_SEED)
        self.seed.setValue(settings.seed or 0)
        self.fixed_seed.toggled.connect(self.seed.setEnabled)
        self.fixed_seed.setChecked(settings.seed is not None)
        self.seed.setEnabled(settings.seed is not None)

        seed_row = QHBoxLayout()
        seed_row.addWidget(self.fixed_seed)
        seed_row.addWidget(self.seed, 1)
        buttons = QDialogButtonBox(QDialogButtonBox.StandardButton.Save | QDialogButtonBox.StandardButton.Cancel)
        buttons.accepted.connect(self.accept)
        buttons.rejected.connect(self.reject)
        form = QFormLayout(self)
        form.addRow("Decoding:", self.decoding_mode)
        form.addRow("Patch size:", self.patch_size)
        form.addRow("Compute device:", self.device)
        form.addRow("Microphone:", self.input_device)
        form.addRow("Speakers:", self.output_device)
        form.addRow("Voice match:", self.voice_match)
        form.addRow("Voice tuning:", self.voice_tuning)
        form.addRow("Temperature:", self.temperature)
        form.addRow("Seed:", seed_row)
        form.addRow(buttons)

    def _patch_size_applies(self) -> None:
        self.patch_size.setEnabled(self.decoding_mode.currentData() in PATCH_MODES)

    def settings(self) -> Settings:
        """The settings as the dialog shows them (fields it does not show are kept)."""
        return Settings(patch_size=self.patch_size.currentData(), decoding_mode=self.decoding_mode.currentData(),
                        device=self.device.currentData(), input_device=self.input_device.currentData(),
                        output_device=self.output_device.currentData(),
                        temperature=round(self.temperature.value(), 2), voice_match=self.voice_match.currentData(),
                        voice_tuning=self.voice_tuning.currentData(),
                        seed=self.seed.value() if self.fixed_seed.isChecked() else None,
                        last_voice=self._base.last_voice)
