fn main() {
    for (name, crd) in mqtt_dsp_operator::crd::all() {
        println!("=== {name}\n{}", mqtt_dsp_operator::crd::to_yaml(&crd).unwrap());
    }
}
