//! `skiffctl cluster info`, `skiffctl master ls|rm|transfer-leader`,
//! `skiffctl token ls|rotate`.

use skiff_proto::v1::{self as pb, cluster_api_client::ClusterApiClient};
use tonic::transport::Channel;

use crate::cli::{ClusterCommand, MasterCommand, Output, TokenCommand};
use crate::commands::CtlError;
use crate::output::{print_json, print_rows};

type Client = ClusterApiClient<Channel>;

pub async fn cluster(
    client: &mut Client,
    cmd: ClusterCommand,
    format: Output,
) -> Result<(), CtlError> {
    match cmd {
        ClusterCommand::Info => {
            let info = client
                .cluster_info(pb::ClusterInfoRequest {})
                .await?
                .into_inner();
            if format == Output::Json {
                print_json(&info);
                return Ok(());
            }
            let settings = info.settings.clone().unwrap_or_default();
            println!("cluster:      {}", info.cluster_id);
            println!("version:      {}", info.version);
            println!("leader:       {} ({})", info.leader_id, info.leader_addr);
            println!("term:         {}", info.term);
            println!("commit index: {}", info.commit_index);
            println!("masters:      {}", info.masters);
            println!("nodes:        {}", info.nodes);
            println!("CA digest:    {}", info.ca_digest);
            println!("cluster CIDR: {}", settings.cluster_cidr);
            println!(
                "heartbeat:    every {} ms, down after {} missed",
                settings.heartbeat_period_ms, settings.heartbeat_misses
            );
            Ok(())
        }
    }
}

#[derive(serde::Serialize)]
struct MasterRow {
    id: String,
    addr: String,
    leader: bool,
    voter: bool,
    matched_index: u64,
    reachable: bool,
}

pub async fn master(
    client: &mut Client,
    cmd: MasterCommand,
    format: Output,
) -> Result<(), CtlError> {
    match cmd {
        MasterCommand::Ls => {
            let masters = client
                .list_masters(pb::ListMastersRequest {})
                .await?
                .into_inner()
                .masters;
            let rows: Vec<MasterRow> = masters
                .into_iter()
                .map(|m| MasterRow {
                    id: m.id,
                    addr: m.addr,
                    leader: m.leader,
                    voter: m.voter,
                    matched_index: m.matched_index,
                    reachable: m.reachable,
                })
                .collect();
            print_rows(
                format,
                &["id", "addr", "role", "matched", "reachable"],
                &rows,
                |r| {
                    vec![
                        r.id.clone(),
                        r.addr.clone(),
                        match (r.leader, r.voter) {
                            (true, _) => "leader",
                            (false, true) => "voter",
                            (false, false) => "learner",
                        }
                        .into(),
                        r.matched_index.to_string(),
                        if r.reachable { "yes" } else { "no" }.into(),
                    ]
                },
            );
            Ok(())
        }
        MasterCommand::Rm { id } => {
            client
                .remove_master(pb::RemoveMasterRequest { id: id.clone() })
                .await?;
            println!("master {id} removed");
            Ok(())
        }
        MasterCommand::TransferLeader { to } => {
            let resp = client
                .transfer_leader(pb::TransferLeaderRequest {
                    to: to.unwrap_or_default(),
                })
                .await?
                .into_inner();
            println!("leader is now {}", resp.leader_id);
            Ok(())
        }
    }
}

pub async fn token(client: &mut Client, cmd: TokenCommand, format: Output) -> Result<(), CtlError> {
    let tokens = match cmd {
        TokenCommand::Ls => client
            .list_tokens(pb::ListTokensRequest {})
            .await?
            .into_inner(),
        TokenCommand::Rotate { worker, manager } => {
            if !worker && !manager {
                return Err(CtlError::Input(
                    "say which token to rotate: --worker, --manager or both".into(),
                ));
            }
            client
                .rotate_token(pb::RotateTokenRequest { worker, manager })
                .await?
                .into_inner()
        }
    };
    if format == Output::Json {
        print_json(&tokens);
    } else {
        println!("worker:  {}", tokens.worker);
        println!("manager: {}", tokens.manager);
    }
    Ok(())
}
