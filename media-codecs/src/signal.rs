//! Test signals and quality measures: a deterministic speech-like source and sines, RMS,
//! waveform SNR with delay search, and a phase-blind spectral SNR for perceptual codecs.

/// A sine of `hz` at `rate`, `seconds` long, peak `amplitude`.
pub fn sine(rate: u32, hz: f64, seconds: f64, amplitude: f64) -> Vec<i16> {
    let n = (f64::from(rate) * seconds) as usize;
    (0..n).map(|i| (amplitude * (2.0 * std::f64::consts::PI * hz * i as f64 / f64::from(rate)).sin()) as i16).collect()
}

/// A speech-like signal: a voiced source (a 110–140 Hz pitch with vibrato, harmonics falling off
/// at 6 dB per octave) through three formant resonators (a vowel near /a/: 700, 1200 and 2600
/// Hz), with a 4 Hz syllable envelope. Deterministic.
pub fn speech_like(rate: u32, seconds: f64) -> Vec<i16> {
    let fs = f64::from(rate);
    let n = (fs * seconds) as usize;
    let formants = [(700.0, 110.0, 1.0), (1200.0, 120.0, 0.5), (2600.0, 160.0, 0.25)];
    // Two-pole resonators.
    let mut coeffs = Vec::new();
    for (f, bw, gain) in formants {
        if f >= fs / 2.0 {
            continue;
        }
        let r = (-std::f64::consts::PI * bw / fs).exp();
        let theta = 2.0 * std::f64::consts::PI * f / fs;
        coeffs.push((2.0 * r * theta.cos(), -r * r, gain * (1.0 - r)));
    }
    let mut state = vec![(0.0f64, 0.0f64); coeffs.len()];
    let mut phase = 0.0f64;
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        let t = i as f64 / fs;
        let pitch = 125.0 + 15.0 * (2.0 * std::f64::consts::PI * 3.0 * t).sin();
        phase += pitch / fs;
        // Sawtooth-ish glottal source from harmonics with 1/k amplitude, band-limited to Nyquist.
        let mut source = 0.0;
        let mut k = 1.0;
        while k * pitch < fs / 2.0 * 0.9 && k <= 40.0 {
            source += (2.0 * std::f64::consts::PI * k * phase).sin() / k;
            k += 1.0;
        }
        let mut y = 0.0;
        for ((a1, a2, g), (y1, y2)) in coeffs.iter().zip(state.iter_mut()) {
            let v = g * source + a1 * *y1 + a2 * *y2;
            *y2 = *y1;
            *y1 = v;
            y += v;
        }
        let envelope = 0.55 + 0.45 * (2.0 * std::f64::consts::PI * 4.0 * t).sin();
        out.push((y * envelope * 9000.0).clamp(-32_000.0, 32_000.0) as i16);
    }
    out
}

/// Root mean square.
/// The power of the `hz` component of `x` at `rate` (Goertzel): what the tests that look for a
/// tone in decoded audio compare.
pub fn tone_power(x: &[i16], rate: u32, hz: f64) -> f64 {
    let c = 2.0 * (2.0 * std::f64::consts::PI * hz / f64::from(rate)).cos();
    let (mut s1, mut s2) = (0.0, 0.0);
    for &v in x {
        let s = f64::from(v) + c * s1 - s2;
        s2 = s1;
        s1 = s;
    }
    s1 * s1 + s2 * s2 - c * s1 * s2
}

pub fn rms(x: &[i16]) -> f64 {
    if x.is_empty() {
        return 0.0;
    }
    (x.iter().map(|&s| f64::from(s).powi(2)).sum::<f64>() / x.len() as f64).sqrt()
}

/// SNR in dB of `decoded` (delayed by `lag` samples) against `reference`, over their overlap.
pub fn snr_db(reference: &[i16], decoded: &[i16], lag: usize) -> f64 {
    let n = reference.len().min(decoded.len().saturating_sub(lag));
    let (mut signal, mut noise) = (0.0f64, 0.0f64);
    for i in 0..n {
        let r = f64::from(reference[i]);
        let d = f64::from(decoded[i + lag]);
        signal += r * r;
        noise += (r - d) * (r - d);
    }
    10.0 * (signal / noise.max(1e-9)).log10()
}

/// The delay (0..=max) at which `decoded` best matches `reference` (cross-correlation).
pub fn best_lag(reference: &[i16], decoded: &[i16], max: usize) -> usize {
    let n = reference.len().min(decoded.len()).saturating_sub(max);
    (0..=max)
        .max_by(|&a, &b| {
            let corr = |lag: usize| (0..n).map(|i| f64::from(reference[i]) * f64::from(decoded[i + lag])).sum::<f64>();
            corr(a).total_cmp(&corr(b))
        })
        .unwrap_or(0)
}

/// SNR in dB between the short-time magnitude spectra of `reference` and `decoded` (delayed by
/// `lag`): 20 ms Hann-windowed frames, bins up to `max_hz`. Blind to phase, so it judges
/// perceptual codecs (Opus) by what they keep, the spectral envelope, where a waveform SNR
/// would not.
pub fn spectral_snr_db(reference: &[i16], decoded: &[i16], lag: usize, rate: u32, max_hz: f64) -> f64 {
    let frame = rate as usize / 50;
    let bins = ((max_hz / f64::from(rate)) * frame as f64) as usize;
    let window: Vec<f64> = (0..frame).map(|i| 0.5 - 0.5 * (2.0 * std::f64::consts::PI * i as f64 / frame as f64).cos()).collect();
    let spectrum = |x: &[i16]| -> Vec<f64> {
        (1..bins)
            .map(|k| {
                let (mut re, mut im) = (0.0, 0.0);
                for (i, (&s, w)) in x.iter().zip(&window).enumerate() {
                    let a = -2.0 * std::f64::consts::PI * (k * i) as f64 / frame as f64;
                    re += f64::from(s) * w * a.cos();
                    im += f64::from(s) * w * a.sin();
                }
                (re * re + im * im).sqrt()
            })
            .collect()
    };
    let n = reference.len().min(decoded.len().saturating_sub(lag));
    let (mut signal, mut noise) = (0.0, 0.0);
    let mut start = 0;
    while start + frame <= n {
        let r = spectrum(&reference[start..start + frame]);
        let d = spectrum(&decoded[start + lag..start + lag + frame]);
        for (a, b) in r.iter().zip(&d) {
            signal += a * a;
            noise += (a - b) * (a - b);
        }
        start += frame * 4; // every 4th frame: enough for a measure, cheap in debug builds
    }
    10.0 * (signal / noise.max(1e-9)).log10()
}
