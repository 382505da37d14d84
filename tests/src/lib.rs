pub mod netns;
pub mod testbed;
pub mod fixture;
pub mod packet;
pub mod lbbed;
