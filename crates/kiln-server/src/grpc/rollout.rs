//! `kiln.admin.v1.TrafficAdmin`: a model's canary traffic weights over gRPC.

use super::{authorize, AdminService};
use crate::error::to_status;
use crate::rollout;
use kiln_protocol::admin as pb;
use kiln_protocol::admin::traffic_admin_server::TrafficAdmin;
use kiln_runtime::traffic::Weights;
use tonic::{Request, Response, Status};

fn answer(model: String, w: Option<Weights>) -> pb::TrafficResponse {
    let (weights, origin) = w.map_or_else(Default::default, |w| {
        (w.weights.into_iter().collect(), w.origin.to_string())
    });
    pb::TrafficResponse {
        model_name: model,
        weights,
        origin,
    }
}

#[tonic::async_trait]
impl TrafficAdmin for AdminService {
    async fn set_traffic(
        &self,
        r: Request<pb::SetTrafficRequest>,
    ) -> Result<Response<pb::TrafficResponse>, Status> {
        authorize(&self.state, &r)?;
        let from = r.remote_addr();
        let req = r.into_inner();
        let w = rollout::set_traffic(
            &self.state,
            from,
            &req.model_name,
            req.weights.into_iter().collect(),
        )
        .map_err(to_status)?;
        Ok(Response::new(answer(req.model_name, Some(w))))
    }

    async fn get_traffic(
        &self,
        r: Request<pb::GetTrafficRequest>,
    ) -> Result<Response<pb::TrafficResponse>, Status> {
        let req = r.into_inner();
        let w = rollout::traffic(&self.state, &req.model_name).map_err(to_status)?;
        Ok(Response::new(answer(req.model_name, w)))
    }
}
