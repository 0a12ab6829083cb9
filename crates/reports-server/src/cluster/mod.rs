//! What the server does in and to the cluster it serves: leader election, APIService
//! registration, namespace lifecycle admission. Authentication and authorization are in
//! `reports-auth`.

pub mod apiservices;
pub mod lease;
pub mod namespaces;
