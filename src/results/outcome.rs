//! What happened to one image: its decoded facts and its outcome (scored, failed, out of
//! scope). Produced by [`crate::scoring`], kept by [`super::store`], exported as [`super::Row`].

use crate::catalog::Entry;
use crate::imaging::dhash::DHash;
use crate::imaging::{Decoded, DicomInfo, Format, Limits, Phi};

/// Facts about a decoded image, kept with its result.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ImageInfo {
    pub format: Format,
    pub width: u32,
    pub height: u32,
    pub bit_depth: u8,
    /// Boxed: most images are not DICOM, and a result is kept per file (a million in a list).
    pub dicom: Option<Box<DicomInfo>>,
}

impl ImageInfo {
    /// This info as the results store keeps it: without PHI.
    pub fn without_phi(&self) -> Self {
        Self {
            dicom: self.dicom.as_deref().map(|d| Box::new(d.without_phi())),
            ..self.clone()
        }
    }
}

impl From<&Decoded> for ImageInfo {
    fn from(d: &Decoded) -> Self {
        Self {
            format: d.format,
            width: d.image.width,
            height: d.image.height,
            bit_depth: d.image.bit_depth,
            dicom: d.dicom.clone().map(Box::new),
        }
    }
}

/// What happened to one entry.
#[derive(Clone, Debug, PartialEq)]
pub enum Outcome {
    Scored {
        info: ImageInfo,
        probs: Vec<f32>,
        /// Unusual-input score as a multiple of the model's threshold (above 1: unusual);
        /// `None` for a model without one.
        unusual: Option<f32>,
        /// Share of the predicted label's heatmap in the image's outer band (see
        /// [`crate::model::heatmap`]); `None` when the heatmap is empty or the result predates it.
        border: Option<f32>,
    },
    Failed {
        info: Option<ImageInfo>,
        error: String,
    },
    /// Read fine, but not what the model is for (a lateral view, a CT slice): not scored.
    OutOfScope { info: ImageInfo, reason: String },
}

/// One entry's result, with its position in the input.
#[derive(Clone, Debug)]
pub struct Scored {
    pub index: usize,
    pub entry: Entry,
    pub outcome: Outcome,
    /// xxh3-128 of the file's bytes (absent when the file could not be read).
    pub hash: Option<u128>,
    /// Difference hash of the decoded image, for near-duplicates.
    pub dhash: Option<DHash>,
    /// Came from the results store rather than from this run.
    pub cached: bool,
    /// The predicted label's heatmap over the image, when the pipeline was asked for overlays.
    pub overlay: Option<Box<crate::model::heatmap::Overlay>>,
}

impl Scored {
    /// A result with nothing but its outcome (no hashes, not from the store).
    pub fn new(index: usize, entry: Entry, outcome: Outcome) -> Self {
        Self {
            index,
            entry,
            outcome,
            hash: None,
            dhash: None,
            cached: false,
            overlay: None,
        }
    }
}

impl Outcome {
    /// The decoded facts, when the file could be decoded.
    pub fn info(&self) -> Option<&ImageInfo> {
        match self {
            Self::Scored { info, .. } | Self::OutOfScope { info, .. } => Some(info),
            Self::Failed { info, .. } => info.as_ref(),
        }
    }

    /// One probability per model label; empty unless scored.
    pub fn probs(&self) -> &[f32] {
        match self {
            Self::Scored { probs, .. } => probs,
            _ => &[],
        }
    }

    /// Why the image was not scored: the error, or why it is out of scope.
    pub fn message(&self) -> Option<&str> {
        match self {
            Self::Failed { error, .. } => Some(error),
            Self::OutOfScope { reason, .. } => Some(reason),
            Self::Scored { .. } => None,
        }
    }

    /// The unusual-input score (multiples of the threshold), when scored by a model with one.
    pub fn unusual(&self) -> Option<f32> {
        match self {
            Self::Scored { unusual, .. } => *unusual,
            _ => None,
        }
    }

    /// The PHI this outcome carries (none once [`Outcome::without_phi`]).
    pub fn phi(&self) -> Phi {
        self.info()
            .and_then(|i| i.dicom.as_deref())
            .map(DicomInfo::phi)
            .unwrap_or_default()
    }

    /// This outcome with `phi` as its only PHI (a DICOM file's; nothing else has any): pass
    /// `Phi::default()` to keep none.
    pub fn with_phi(mut self, phi: Phi) -> Self {
        let info = match &mut self {
            Self::Scored { info, .. } | Self::OutOfScope { info, .. } => Some(info),
            Self::Failed { info, .. } => info.as_mut(),
        };
        if let Some(d) = info.and_then(|i| i.dicom.as_deref_mut()) {
            d.set_phi(phi);
        }
        self
    }

    /// This outcome as the results store keeps it: without PHI.
    pub fn without_phi(&self) -> Self {
        let mut out = self.clone();
        match &mut out {
            Self::Scored { info, .. } | Self::OutOfScope { info, .. } => *info = info.without_phi(),
            Self::Failed { info, .. } => *info = info.as_ref().map(ImageInfo::without_phi),
        }
        out
    }
}

impl Scored {
    /// The file's PHI (DICOM only): from this run's decode, or, for a result from the store
    /// (which never keeps PHI), read again from the file's header. Call it only where PHI is to
    /// be shown (`--show-phi`).
    pub fn phi(&self) -> Phi {
        match self.outcome.info().and_then(|i| i.dicom.as_deref()) {
            Some(_) if self.cached => {
                crate::imaging::read_phi(&self.entry.path, &Limits::default())
            }
            Some(d) => d.phi(),
            None => Phi::default(),
        }
    }
}
