//! Predefined functions: the manifest folder (`FUNCTIONS_DIR`) loaded into
//! PostgreSQL at start, so `initialize` may name them without a script.
//!
//! Each sub-folder is named by its Language-Title and holds `function.json`
//! (`description`, `script`, `params_schema`, `examples`) and the script.

use anyhow::{bail, Context as _};
use schemas::{script_hash, LanguageTitle};
use serde::Deserialize;
use serde_json::Value;
use sqlx::PgPool;
use std::path::{Path, PathBuf};

/// The folder shipped in the repository.
pub const DEFAULT_DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../functions");

/// One predefined function, read from its folder.
#[derive(Debug)]
pub struct Predefined {
    pub language_title: LanguageTitle,
    pub description: String,
    pub script: String,
    pub params_schema: Value,
    pub examples: Value,
}

#[derive(Deserialize)]
struct Manifest {
    description: String,
    script: PathBuf,
    #[serde(default)]
    params_schema: Value,
    #[serde(default)]
    examples: Value,
}

/// Reads every function folder under `dir`, sorted by name.
pub fn read_dir(dir: &Path) -> anyhow::Result<Vec<Predefined>> {
    let mut folders: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("reading FUNCTIONS_DIR {}", dir.display()))?
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .filter(|path| path.join("function.json").is_file())
        .collect();
    folders.sort();
    folders.iter().map(|folder| read_one(folder)).collect()
}

fn read_one(folder: &Path) -> anyhow::Result<Predefined> {
    let name = folder
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or_default();
    let language_title: LanguageTitle = name.parse().with_context(|| {
        format!(
            "{}: the folder name must be a Language-Title",
            folder.display()
        )
    })?;
    let manifest_path = folder.join("function.json");
    let manifest: Manifest = serde_json::from_slice(&std::fs::read(&manifest_path)?)
        .with_context(|| format!("parsing {}", manifest_path.display()))?;
    if manifest.script.components().count() != 1 {
        bail!(
            "{}: `script` must name a file in the folder",
            manifest_path.display()
        );
    }
    let script_path = folder.join(&manifest.script);
    let script = std::fs::read_to_string(&script_path)
        .with_context(|| format!("reading {}", script_path.display()))?;
    Ok(Predefined {
        language_title,
        description: manifest.description,
        script,
        params_schema: manifest.params_schema,
        examples: manifest.examples,
    })
}

/// Stores the functions (owner `''`, type `predefined`), replacing earlier
/// versions, in one transaction.
pub async fn register(db: &PgPool, functions: &[Predefined]) -> anyhow::Result<()> {
    let mut tx = db.begin().await?;
    for function in functions {
        let language = function.language_title.language;
        let hash = script_hash(language, &function.script);
        sqlx::query(
            "INSERT INTO scripts (hash, language, content) VALUES ($1, $2, $3)
             ON CONFLICT (hash) DO NOTHING",
        )
        .bind(&hash)
        .bind(language.as_str())
        .bind(&function.script)
        .execute(&mut *tx)
        .await?;
        sqlx::query(
            "INSERT INTO functions (owner, language_title, language, title, kind, description,
                                    script_hash, params_schema, examples)
             VALUES ('', $1, $2, $3, 'predefined', $4, $5, $6, $7)
             ON CONFLICT (owner, language_title) DO UPDATE
             SET description = EXCLUDED.description, script_hash = EXCLUDED.script_hash,
                 params_schema = EXCLUDED.params_schema, examples = EXCLUDED.examples,
                 updated_at = now()
             WHERE (functions.description, functions.script_hash, functions.params_schema,
                    functions.examples)
                   IS DISTINCT FROM (EXCLUDED.description, EXCLUDED.script_hash,
                                     EXCLUDED.params_schema, EXCLUDED.examples)",
        )
        .bind(function.language_title.to_string())
        .bind(language.as_str())
        .bind(&function.language_title.title)
        .bind(&function.description)
        .bind(&hash)
        .bind(&function.params_schema)
        .bind(&function.examples)
        .execute(&mut *tx)
        .await?;
    }
    tx.commit().await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shipped_functions_read() {
        let functions = read_dir(Path::new(DEFAULT_DIR)).unwrap();
        let names: Vec<String> = functions
            .iter()
            .map(|f| f.language_title.to_string())
            .collect();
        assert_eq!(
            names,
            [
                "nodejs-calculator",
                "python-textprocessor",
                "rust-validator"
            ]
        );
        for function in &functions {
            assert!(!function.script.is_empty());
            assert!(function.examples.as_array().is_some_and(|e| !e.is_empty()));
            assert_eq!(function.params_schema["type"], "object");
        }
    }
}
