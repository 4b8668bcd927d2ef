//! The node join token: the secret an agent presents (`capstan agent --token`) to get its node
//! credentials.

use super::UserInfo;
use crate::server::ApiServer;

/// The user a bearer token names if it is the cluster's node join token.
pub async fn lookup(_server: &ApiServer, _token: &str) -> Option<UserInfo> {
    None
}
