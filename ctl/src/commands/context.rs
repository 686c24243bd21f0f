//! `skiffctl context ls|use|add|rm`: the contexts file, no cluster needed.

use crate::cli::{ContextCommand, Output};
use crate::commands::CtlError;
use crate::context::{Context, Contexts, default_path};
use crate::output::print_rows;

#[derive(serde::Serialize)]
struct Row {
    name: String,
    current: bool,
    masters: Vec<String>,
    tls: bool,
}

pub fn run(cmd: ContextCommand, format: Output) -> Result<(), CtlError> {
    let path = default_path();
    let mut all = Contexts::load(&path)?;
    match cmd {
        ContextCommand::Ls => {
            let rows: Vec<Row> = all
                .contexts
                .iter()
                .map(|(name, c)| Row {
                    name: name.clone(),
                    current: all.current.as_deref() == Some(name),
                    masters: c.masters.clone(),
                    tls: c.ca.is_some(),
                })
                .collect();
            print_rows(format, &["name", "masters", "tls"], &rows, |r| {
                vec![
                    if r.current {
                        format!("{} *", r.name)
                    } else {
                        r.name.clone()
                    },
                    r.masters.join(","),
                    if r.tls { "mtls" } else { "plain" }.into(),
                ]
            });
            Ok(())
        }
        ContextCommand::Use { name } => {
            if !all.contexts.contains_key(&name) {
                return Err(CtlError::Input(format!(
                    "no context named {name:?} in {}",
                    path.display()
                )));
            }
            all.current = Some(name.clone());
            all.save(&path)?;
            println!("now using context {name}");
            Ok(())
        }
        ContextCommand::Add {
            name,
            master,
            ca,
            cert,
            key,
            make_current,
        } => {
            if cert.is_some() != key.is_some() {
                return Err(CtlError::Input(
                    "--cert and --key go together: give both or neither".into(),
                ));
            }
            for file in [&ca, &cert, &key].into_iter().flatten() {
                if !file.exists() {
                    return Err(CtlError::Input(format!(
                        "{} does not exist",
                        file.display()
                    )));
                }
            }
            all.contexts.insert(
                name.clone(),
                Context {
                    masters: master,
                    ca,
                    cert,
                    key,
                },
            );
            if make_current || all.current.is_none() {
                all.current = Some(name.clone());
            }
            all.save(&path)?;
            println!("context {name} saved in {}", path.display());
            Ok(())
        }
        ContextCommand::Rm { name } => {
            if all.contexts.remove(&name).is_none() {
                return Err(CtlError::Input(format!("no context named {name:?}")));
            }
            if all.current.as_deref() == Some(name.as_str()) {
                all.current = None;
            }
            all.save(&path)?;
            println!("context {name} removed");
            Ok(())
        }
    }
}
