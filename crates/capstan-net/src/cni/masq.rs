//! The bridge plugin removes its ipMasq chain only while the sandbox's netns still exists (it
//! reads the addresses from the interface). When DEL comes after the netns is gone, the chain it
//! made for the container is found by the plugin's rule comment and removed here.

use tokio::process::Command;

use super::CniError;

/// Removes the POSTROUTING jumps carrying `id: "<container_id>"` for `network` and their chains.
pub async fn remove_leftover_chains(network: &str, container_id: &str) -> Result<(), CniError> {
    for tool in ["iptables", "ip6tables"] {
        let save = format!("{tool}-save");
        let Ok(out) = Command::new(&save).args(["-t", "nat"]).output().await else {
            continue;
        };
        if !out.status.success() {
            continue;
        }
        let text = String::from_utf8_lossy(&out.stdout);
        for args in leftover_rules(&text, network, container_id) {
            let chain = args
                .iter()
                .position(|a| a == "-j")
                .and_then(|i| args.get(i + 1))
                .cloned();
            let mut delete = vec!["-t".to_string(), "nat".into(), "-D".into()];
            delete.extend(args.into_iter().skip(1));
            run(tool, &delete).await?;
            if let Some(chain) = chain.filter(|c| c.starts_with("CNI-")) {
                run(
                    tool,
                    &["-t".into(), "nat".into(), "-F".into(), chain.clone()],
                )
                .await?;
                run(tool, &["-t".into(), "nat".into(), "-X".into(), chain]).await?;
            }
        }
    }
    Ok(())
}

async fn run(tool: &str, args: &[String]) -> Result<(), CniError> {
    let out = Command::new(tool)
        .args(args)
        .output()
        .await
        .map_err(|source| CniError::Io {
            context: format!("running {tool}"),
            source,
        })?;
    if out.status.success() {
        Ok(())
    } else {
        Err(CniError::Failed {
            plugin: format!("{tool} {}", args.join(" ")),
            status: out.status.to_string(),
            output: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        })
    }
}

/// The `-A POSTROUTING ...` rules of an `iptables-save -t nat` text that the bridge plugin made
/// for this container, as argument lists (first item `-A`).
pub fn leftover_rules(save: &str, network: &str, container_id: &str) -> Vec<Vec<String>> {
    save.lines()
        .filter(|l| l.starts_with("-A POSTROUTING "))
        .map(split_args)
        .filter(|args| {
            let comment = args
                .iter()
                .position(|a| a == "--comment")
                .and_then(|i| args.get(i + 1));
            comment.is_some_and(|c| {
                c.contains(&format!("name: \"{network}\""))
                    && c.contains(&format!("id: \"{container_id}\""))
            })
        })
        .collect()
}

/// Splits an iptables-save line: whitespace separated, `"..."` quoted with `\"` and `\\` escapes.
pub fn split_args(line: &str) -> Vec<String> {
    let mut args = Vec::new();
    let mut current = String::new();
    let mut in_arg = false;
    let mut quoted = false;
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        match c {
            '"' => {
                quoted = !quoted;
                in_arg = true;
            }
            '\\' if quoted => {
                if let Some(next) = chars.next() {
                    current.push(next);
                }
            }
            c if c.is_whitespace() && !quoted => {
                if in_arg {
                    args.push(std::mem::take(&mut current));
                    in_arg = false;
                }
            }
            c => {
                current.push(c);
                in_arg = true;
            }
        }
    }
    if in_arg {
        args.push(current);
    }
    args
}
