"""Draw the app icon, resources/icons/tldr-voice.png (256 x 256): a rounded tile with a row of sound-wave bars.

    QT_QPA_PLATFORM=offscreen .venv/bin/python packaging/make_icon.py

The PNG is committed; run this only to change it. The desktop package (packaging/build_app.sh) ships it.
"""

import math
import sys
from pathlib import Path

from PySide6.QtCore import QRectF, Qt
from PySide6.QtGui import QColor, QGuiApplication, QImage, QLinearGradient, QPainter

SIZE = 256
OUT = Path(__file__).resolve().parents[1] / "resources" / "icons" / "tldr-voice.png"


def draw(size: int = SIZE) -> QImage:
    image = QImage(size, size, QImage.Format.Format_ARGB32)
    image.fill(Qt.GlobalColor.transparent)
    p = QPainter(image)
    p.setRenderHint(QPainter.RenderHint.Antialiasing)
    gradient = QLinearGradient(0, 0, size, size)
    gradient.setColorAt(0, QColor("#2f6fdf"))
    gradient.setColorAt(1, QColor("#183a80"))
    p.setBrush(gradient)
    p.setPen(Qt.PenStyle.NoPen)
    margin = size * 0.04
    p.drawRoundedRect(QRectF(margin, margin, size - 2 * margin, size - 2 * margin), size * 0.2, size * 0.2)
    bars = 9
    width = size * 0.055
    step = size * 0.08
    left = size / 2 - step * (bars - 1) / 2
    p.setBrush(QColor("#ffffff"))
    for i in range(bars):
        # a speech-like envelope: tall in the middle, a second swell to the right
        x = (i - (bars - 1) / 2) / ((bars - 1) / 2)
        height = size * (0.14 + 0.46 * math.exp(-3 * x * x) * (0.75 + 0.25 * math.cos(5 * x)))
        centre_x = left + i * step
        p.drawRoundedRect(QRectF(centre_x - width / 2, size / 2 - height / 2, width, height), width / 2, width / 2)
    p.end()
    return image


if __name__ == "__main__":
    app = QGuiApplication(sys.argv)
    if not draw().save(str(OUT)):
        raise SystemExit(f"could not write {OUT}")
    print(f"wrote {OUT}")
