//! Languages and the `Language-Title` that names a script.

use serde::{Deserialize, Serialize};
use std::{fmt, str::FromStr};

/// A runtime a script can be written for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Language {
    Nodejs,
    Python,
    Rust,
    Wasm,
}

impl Language {
    /// Every language of the contract.
    pub const ALL: [Language; 4] = [Self::Nodejs, Self::Python, Self::Rust, Self::Wasm];

    /// The lowercase name used in headers and subjects.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Nodejs => "nodejs",
            Self::Python => "python",
            Self::Rust => "rust",
            Self::Wasm => "wasm",
        }
    }
}

impl fmt::Display for Language {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Language {
    type Err = LanguageTitleError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|l| l.as_str() == s)
            .ok_or_else(|| LanguageTitleError::UnknownLanguage(s.to_owned()))
    }
}

/// Why a `Language-Title` was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LanguageTitleError {
    #[error("Language-Title must look like <language>-<title>, e.g. nodejs-calculator")]
    Malformed,
    #[error("the title must be 1 to 64 characters of A-Z, a-z, 0-9, '_' and '-'")]
    InvalidTitle,
    #[error("unknown language '{0}': expected nodejs, python, rust or wasm")]
    UnknownLanguage(String),
}

/// A parsed `Language-Title` such as `nodejs-calculator`: the language is the
/// part before the first `-`, the title the rest.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct LanguageTitle {
    pub language: Language,
    pub title: String,
}

impl LanguageTitle {
    /// The longest title accepted.
    pub const MAX_TITLE_LEN: usize = 64;
}

impl FromStr for LanguageTitle {
    type Err = LanguageTitleError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (language, title) = s.split_once('-').ok_or(LanguageTitleError::Malformed)?;
        if language.is_empty() {
            return Err(LanguageTitleError::Malformed);
        }
        let title_ok = !title.is_empty()
            && title.len() <= Self::MAX_TITLE_LEN
            && title
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
        if !title_ok {
            return Err(LanguageTitleError::InvalidTitle);
        }
        Ok(Self {
            language: language.parse()?,
            title: title.to_owned(),
        })
    }
}

impl fmt::Display for LanguageTitle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.language, self.title)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_language_and_title() {
        let lt: LanguageTitle = "nodejs-calculator".parse().unwrap();
        assert_eq!(lt.language, Language::Nodejs);
        assert_eq!(lt.title, "calculator");
        let lt: LanguageTitle = "python-text-processor_2".parse().unwrap();
        assert_eq!(lt.language, Language::Python);
        assert_eq!(lt.title, "text-processor_2");
        assert_eq!(lt.to_string(), "python-text-processor_2");
    }

    #[test]
    fn refuses_bad_titles() {
        assert_eq!(
            "nodejs".parse::<LanguageTitle>(),
            Err(LanguageTitleError::Malformed)
        );
        assert_eq!(
            "-calc".parse::<LanguageTitle>(),
            Err(LanguageTitleError::Malformed)
        );
        assert_eq!(
            "nodejs-".parse::<LanguageTitle>(),
            Err(LanguageTitleError::InvalidTitle)
        );
        assert_eq!(
            "nodejs-a b".parse::<LanguageTitle>(),
            Err(LanguageTitleError::InvalidTitle)
        );
        let long = format!("nodejs-{}", "x".repeat(65));
        assert_eq!(
            long.parse::<LanguageTitle>(),
            Err(LanguageTitleError::InvalidTitle)
        );
        assert_eq!(
            "ruby-calc".parse::<LanguageTitle>(),
            Err(LanguageTitleError::UnknownLanguage("ruby".into()))
        );
    }
}
