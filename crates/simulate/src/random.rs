//! A small seeded generator and the two spreads of subscriptions. Written out
//! here rather than taken from a crate so that a seed gives the same scenario
//! on every build, whatever version of a random-number crate is current.

/// SplitMix64: fast, good enough for load shapes, and fully determined by its seed.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A float in `[0, 1)`.
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// An integer in `0..n`; `n` must be positive.
    pub fn below(&mut self, n: u64) -> u64 {
        // Multiply-shift: unbiased enough for n far below 2^64.
        ((u128::from(self.next_u64()) * u128::from(n)) >> 64) as u64
    }
}

/// Picks an index in `0..n`: uniformly, or with Zipf's law (index 0 the most
/// popular), from a precomputed cumulative table.
#[derive(Debug, Clone)]
pub struct Picker {
    cumulative: Option<Vec<f64>>,
    n: u64,
}

impl Picker {
    pub fn uniform(n: u32) -> Picker {
        Picker {
            cumulative: None,
            n: u64::from(n),
        }
    }

    /// P(k) proportional to 1 / (k + 1)^exponent.
    pub fn zipf(n: u32, exponent: f64) -> Picker {
        let mut total = 0.0;
        let mut cumulative = Vec::with_capacity(n as usize);
        for k in 1..=n {
            total += 1.0 / f64::from(k).powf(exponent);
            cumulative.push(total);
        }
        for c in &mut cumulative {
            *c /= total;
        }
        Picker {
            cumulative: Some(cumulative),
            n: u64::from(n),
        }
    }

    pub fn pick(&self, rng: &mut Rng) -> u32 {
        match &self.cumulative {
            None => rng.below(self.n) as u32,
            Some(cumulative) => {
                let u = rng.unit();
                let index = cumulative.partition_point(|&c| c <= u);
                index.min(cumulative.len() - 1) as u32
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_same_seed_gives_the_same_numbers() {
        let a: Vec<u64> = (0..5)
            .map({
                let mut rng = Rng::new(7);
                move |_| rng.next_u64()
            })
            .collect();
        let mut rng = Rng::new(7);
        let b: Vec<u64> = (0..5).map(|_| rng.next_u64()).collect();
        assert_eq!(a, b);
        assert_ne!(Rng::new(8).next_u64(), a[0]);
    }

    #[test]
    fn zipf_puts_most_weight_on_the_first_few() {
        let picker = Picker::zipf(1000, 1.0);
        let mut rng = Rng::new(42);
        let mut counts = vec![0u32; 1000];
        for _ in 0..100_000 {
            counts[picker.pick(&mut rng) as usize] += 1;
        }
        // H(1000) is about 7.49, so index 0 takes about 13.4 % and the first ten about 39 %.
        let first = f64::from(counts[0]) / 100_000.0;
        let top_ten: u32 = counts[..10].iter().sum();
        assert!((0.12..0.15).contains(&first), "{first}");
        assert!((0.36..0.42).contains(&(f64::from(top_ten) / 100_000.0)));
        assert!(counts[0] > counts[1] && counts[1] > counts[9] && counts[9] > counts[999]);
    }

    #[test]
    fn uniform_spreads_evenly() {
        let picker = Picker::uniform(10);
        let mut rng = Rng::new(1);
        let mut counts = [0u32; 10];
        for _ in 0..100_000 {
            counts[picker.pick(&mut rng) as usize] += 1;
        }
        assert!(
            counts.iter().all(|&c| (9_000..11_000).contains(&c)),
            "{counts:?}"
        );
    }
}
