//! Line plots as PNG (loss curves, probe accuracy per layer) with no font dependency:
//! tick labels are drawn with a built-in 3x5 pixel font (digits, '.', '-', 'e').

use crate::tokenizer::RgbImage;

const GLYPHS: [(char, [u8; 5]); 14] = [
    ('0', [0b111, 0b101, 0b101, 0b101, 0b111]),
    ('1', [0b010, 0b110, 0b010, 0b010, 0b111]),
    ('2', [0b111, 0b001, 0b111, 0b100, 0b111]),
    ('3', [0b111, 0b001, 0b111, 0b001, 0b111]),
    ('4', [0b101, 0b101, 0b111, 0b001, 0b001]),
    ('5', [0b111, 0b100, 0b111, 0b001, 0b111]),
    ('6', [0b111, 0b100, 0b111, 0b101, 0b111]),
    ('7', [0b111, 0b001, 0b010, 0b010, 0b010]),
    ('8', [0b111, 0b101, 0b111, 0b101, 0b111]),
    ('9', [0b111, 0b101, 0b111, 0b001, 0b111]),
    ('.', [0b000, 0b000, 0b000, 0b000, 0b010]),
    ('-', [0b000, 0b000, 0b111, 0b000, 0b000]),
    ('e', [0b000, 0b111, 0b111, 0b100, 0b111]),
    (' ', [0; 5]),
];

struct Canvas {
    w: usize,
    h: usize,
    data: Vec<u8>,
}

impl Canvas {
    fn set(&mut self, x: i64, y: i64, c: [u8; 3]) {
        if x >= 0 && y >= 0 && (x as usize) < self.w && (y as usize) < self.h {
            let i = (y as usize * self.w + x as usize) * 3;
            self.data[i..i + 3].copy_from_slice(&c);
        }
    }
    fn line(&mut self, (x0, y0): (f64, f64), (x1, y1): (f64, f64), c: [u8; 3], thick: i64) {
        let n = ((x1 - x0).abs().max((y1 - y0).abs()) as usize).max(1);
        for i in 0..=n {
            let t = i as f64 / n as f64;
            let (x, y) = ((x0 + t * (x1 - x0)).round() as i64, (y0 + t * (y1 - y0)).round() as i64);
            for dx in 0..thick {
                for dy in 0..thick {
                    self.set(x + dx, y + dy, c);
                }
            }
        }
    }
    fn text(&mut self, s: &str, x: i64, y: i64, scale: i64, c: [u8; 3]) {
        for (k, ch) in s.chars().enumerate() {
            let Some((_, g)) = GLYPHS.iter().find(|(g, _)| *g == ch) else { continue };
            for (row, bits) in g.iter().enumerate() {
                for col in 0..3 {
                    if bits >> (2 - col) & 1 == 1 {
                        for sx in 0..scale {
                            for sy in 0..scale {
                                self.set(x + (k as i64 * 4 + col) * scale + sx, y + row as i64 * scale + sy, c);
                            }
                        }
                    }
                }
            }
        }
    }
}

fn label(v: f64) -> String {
    if v != 0.0 && (v.abs() < 0.01 || v.abs() >= 10000.0) {
        format!("{v:.1e}")
    } else if v.abs() >= 100.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.2}")
    }
}

/// Plots series of (x, y) points on shared axes; each series has an RGB colour.
pub fn line_plot(series: &[(Vec<(f64, f64)>, [u8; 3])], width: usize, height: usize) -> RgbImage {
    let mut cv = Canvas { w: width, h: height, data: vec![255; width * height * 3] };
    let pts: Vec<&(f64, f64)> =
        series.iter().flat_map(|s| s.0.iter()).filter(|p| p.0.is_finite() && p.1.is_finite()).collect();
    let (left, right, top, bottom) = (70.0, 20.0, 20.0, 40.0);
    let (pw, ph) = (width as f64 - left - right, height as f64 - top - bottom);
    let axis = [60, 60, 60];
    cv.line((left, top), (left, top + ph), axis, 2);
    cv.line((left, top + ph), (left + pw, top + ph), axis, 2);
    if pts.is_empty() {
        return RgbImage::new(width, height, cv.data);
    }
    let (mut x0, mut x1) = pts.iter().fold((f64::MAX, f64::MIN), |a, p| (a.0.min(p.0), a.1.max(p.0)));
    let (mut y0, mut y1) = pts.iter().fold((f64::MAX, f64::MIN), |a, p| (a.0.min(p.1), a.1.max(p.1)));
    if x1 <= x0 {
        x1 = x0 + 1.0;
    }
    if y1 <= y0 {
        y1 = y0 + 1.0;
        y0 -= 1.0;
    }
    let pad = 0.05 * (y1 - y0);
    let (y0, y1) = (y0 - pad, y1 + pad);
    x0 = x0.min(x1);
    let px = |x: f64| left + (x - x0) / (x1 - x0) * pw;
    let py = |y: f64| top + (1.0 - (y - y0) / (y1 - y0)) * ph;
    for i in 0..=4 {
        let (fx, fy) = (x0 + (x1 - x0) * i as f64 / 4.0, y0 + (y1 - y0) * i as f64 / 4.0);
        cv.line((left, py(fy)), (left + pw, py(fy)), [225, 225, 225], 1);
        cv.text(&label(fy), 4, py(fy) as i64 - 5, 2, axis);
        cv.text(&label(fx), px(fx) as i64 - 16, (top + ph + 10.0) as i64, 2, axis);
    }
    for (s, c) in series {
        let p: Vec<&(f64, f64)> = s.iter().filter(|p| p.0.is_finite() && p.1.is_finite()).collect();
        for w in p.windows(2) {
            cv.line((px(w[0].0), py(w[0].1)), (px(w[1].0), py(w[1].1)), *c, 2);
        }
        for q in &p {
            if p.len() < 40 {
                cv.line((px(q.0) - 2.0, py(q.1) - 2.0), (px(q.0) - 2.0, py(q.1) - 2.0), *c, 5);
            }
        }
    }
    RgbImage::new(width, height, cv.data)
}

#[cfg(test)]
mod tests {
    #[test]
    fn draws_series_in_their_colours() {
        let img = super::line_plot(&[(vec![(0.0, 1.0), (10.0, 0.5)], [200, 0, 0])], 300, 200);
        let red = img.data.chunks_exact(3).filter(|p| *p == [200, 0, 0]).count();
        assert!(red > 100, "{red}");
        assert_eq!(super::label(0.5), "0.50");
        assert_eq!(super::label(0.00123), "1.2e-3");
    }
}
